"""Replay the incident on the simulator: four ways of polling the same cameras, one table.

Twelve simulated cameras on 127.0.90.1-12:8554, one of which accepts TCP and then never answers
and allows two sessions; a 2 s deadline and a 5 s interval. Every row polls the same cameras
in the same process; between rows the simulator's counters are reset and any process a row
left behind is killed by pid and counted as that row's leak.

    .venv/bin/python bench/incident.py --cycles 60 --rows a,b,c,d [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

import psutil
from rich.console import Console
from rich.table import Table

from _pollers import ROWS, RowContext, Target
from campatrol.capture.ffmpeg import ANALYZE_DURATION_US
from campatrol.ffmpeg import FfmpegInfo, find_ffmpeg
from campatrol.sim import SimCameraConfig, Simulator

SUBNET: Final = "127.0.90"
PORT: Final = 8554
CAMERAS: Final = 12
HANGING: Final = "cam12"
SAMPLE_EVERY: Final = 0.2
# "short" gives rows (a)-(c) campatrol's probing limit: with ffmpeg's default (5 s of stream
# analysis) a healthy capture takes ~2.9 s on these cameras and misses the 2 s deadline.
PROBES: Final = {
    "short": ("-analyzeduration", str(ANALYZE_DURATION_US)),
    "default": (),
}
QUIET_WITHIN: Final = 15.0  # seconds the simulator gets to see every connection close
DRAIN_WITHIN: Final = 600.0  # seconds the bench waits for row (c)'s threads before going on


@dataclass
class RowResult:
    """One line of the table."""

    row: str
    name: str
    unit: str  # what the process columns count: "ffmpeg" or "threads"
    peak_processes: int
    final_processes: int
    leaked: int
    hang_peak_sessions: int
    hang_refused: int
    hang_peak_connections: int
    healthy_attempts: int
    healthy_ok: int
    success_rate: float | None
    latency_median: float | None
    latency_p95: float | None
    cpu_seconds: float
    cpu_per_snapshot: float | None
    wall_seconds: float
    drained_after: float  # seconds from the row's end until its leftovers were gone
    errors: dict[str, int]


def sim_cameras(fault: str) -> list[SimCameraConfig]:
    """The incident's subnet: eleven healthy cameras and one that hangs, two slots each."""
    return [
        SimCameraConfig(
            id=f"cam{n}",
            host=f"{SUBNET}.{n}",
            port=PORT,
            paths={"main": "/stream1"},
            width=640,
            height=360,
            fps=10,
            gop=10,
            max_sessions=2,
            over_limit="453",
            fault=fault if f"cam{n}" == HANGING else None,
        )
        for n in range(1, CAMERAS + 1)
    ]


def ffmpeg_descendants() -> list[psutil.Process]:
    """ffmpeg processes descending from this process (zombies are not running: left out)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def cpu_total() -> float:
    """CPU seconds of this process and of its reaped children so far."""
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


class Sampler:
    """Samples the live process (or stuck thread) count and the hanging camera's connections."""

    def __init__(self, sim: Simulator, ctx: RowContext, count_threads: bool) -> None:
        self._sim = sim
        self._ctx = ctx
        self._count_threads = count_threads
        self.peak = 0
        self.peak_connections = 0

    def count(self) -> int:
        if self._count_threads:
            return sum(1 for thread in self._ctx.threads if thread.is_alive())
        return len(ffmpeg_descendants())

    async def sample(self) -> int:
        """Take one sample; return the live count. The process table is read in a thread."""
        now = await asyncio.to_thread(self.count)
        self.peak = max(self.peak, now)
        # The simulator lives on this event loop: its stats are read here, not in the thread.
        connections = self._sim.camera(HANGING).stats()["open_connections"]
        self.peak_connections = max(self.peak_connections, connections)
        return now

    async def run(self) -> None:
        """Sample every SAMPLE_EVERY seconds until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(SAMPLE_EVERY)


async def wait_quiet(sim: Simulator) -> bool:
    """Wait until no camera holds a connection or session; False if QUIET_WITHIN passes."""
    end = time.monotonic() + QUIET_WITHIN
    while time.monotonic() < end:
        stats = [camera.stats() for camera in sim.cameras()]
        if all(s["open_connections"] == 0 and s["sessions"] == 0 for s in stats):
            return True
        await asyncio.sleep(0.1)
    return False


async def end_leftovers(ctx: RowContext) -> int:
    """Kill by pid every ffmpeg this process still has after a row; return how many there were."""
    leftovers = {proc.pid for proc in ffmpeg_descendants()}
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    # asyncio's child watcher reaps its own children; wait for that rather than racing it.
    for proc in ctx.abandoned:
        await proc.wait()
    end = time.monotonic() + 10.0
    # Nothing signals "a process of someone else's making is gone": poll the process table.
    while ffmpeg_descendants() and time.monotonic() < end:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return len(leftovers)


async def end_threads(ctx: RowContext) -> int:
    """Wait for row (c)'s capture threads; return how many still ran QUIET_WITHIN s later.

    Threads cannot be killed, so the bench then waits (up to DRAIN_WITHIN) until they are all
    gone: otherwise they would go on loading the simulator and the CPU during the next row.
    """
    started = time.monotonic()
    stuck = 0
    # The threads run OpenCV's code, which signals nothing: poll them.
    while time.monotonic() - started < DRAIN_WITHIN:
        alive = sum(1 for thread in ctx.threads if thread.is_alive())
        if time.monotonic() - started < QUIET_WITHIN:
            stuck = alive
        if not alive:
            break
        await asyncio.sleep(0.1)
    else:
        logging.error("row c: %d capture thread(s) still running after %.0f s", alive, DRAIN_WITHIN)
    ctx.drained_after = time.monotonic() - started
    return stuck


def percentile(values: list[float], share: float) -> float | None:
    """The `share` quantile (0..1) of values, None when there are none."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


async def run_row(
    sim: Simulator, key: str, args: argparse.Namespace, ffmpeg: FfmpegInfo
) -> RowResult:
    """Run one row on a quiet simulator and measure it."""
    name, poll = ROWS[key]
    if not await wait_quiet(sim):
        logging.warning("row %s: the simulator still holds connections from the last row", key)
    sim.reset_counters()
    targets = [
        Target(c.id, c.config.host, c.port, c.config.paths["main"], c.config.max_sessions)
        for c in sim.cameras()
    ]
    ctx = RowContext(
        targets=targets,
        ffmpeg=ffmpeg,
        cycles=args.cycles,
        interval=args.interval,
        deadline=args.deadline,
        concurrency=args.concurrency,
        input_options=PROBES[args.probe],
    )
    threads = key == "c"
    sampler = Sampler(sim, ctx, count_threads=threads)

    # Exceptions left in tasks nobody awaits (ha-ffmpeg's kill() starts one) are this row's.
    loop = asyncio.get_running_loop()

    def count_unretrieved(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        name = type(error).__name__ if error is not None else "error"
        ctx.tally.errors[f"{name} in an unawaited task"] += 1

    loop.set_exception_handler(count_unretrieved)
    cpu_before = cpu_total()
    started = time.monotonic()
    async with asyncio.TaskGroup() as tg:
        sampling = tg.create_task(sampler.run())
        try:
            await poll(ctx)
        finally:
            final = await sampler.sample()
            sampling.cancel()
    wall = time.monotonic() - started
    leaked = await end_threads(ctx) if threads else await end_leftovers(ctx)
    await wait_quiet(sim)
    cpu = cpu_total() - cpu_before
    loop.set_exception_handler(None)

    hanging = sim.camera(HANGING).stats()
    healthy = [(ok, secs) for cam, ok, secs in ctx.tally.attempts if cam != HANGING]
    good = [secs for ok, secs in healthy if ok]
    return RowResult(
        row=key,
        name=name,
        unit="threads" if threads else "ffmpeg",
        peak_processes=sampler.peak,
        final_processes=final,
        leaked=leaked,
        hang_peak_sessions=hanging["peak_sessions"],
        hang_refused=hanging["refused"],
        hang_peak_connections=sampler.peak_connections,
        healthy_attempts=len(healthy),
        healthy_ok=len(good),
        success_rate=len(good) / len(healthy) if healthy else None,
        latency_median=percentile(good, 0.5),
        latency_p95=percentile(good, 0.95),
        cpu_seconds=cpu,
        cpu_per_snapshot=cpu / len(good) if good else None,
        wall_seconds=wall,
        drained_after=ctx.drained_after,
        errors=dict(ctx.tally.errors),
    )


def render(results: list[RowResult], meta: dict[str, Any], console: Console) -> None:
    """Print the table with rich."""

    def seconds(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f} s"

    table = Table(title=f"The incident, {meta['cycles']} cycles ({meta['description']})")
    for header in (
        "row", "peak procs", "final procs", "leaked", "hang: peak sess.", "hang: refused",
        "hang: peak conns", "healthy ok", "median", "p95", "CPU s / snapshot", "raised",
    ):  # fmt: skip
        table.add_column(header, justify="left" if header == "row" else "right")
    for r in results:
        unit = " thr" if r.unit == "threads" else ""
        table.add_row(
            r.name,
            f"{r.peak_processes}{unit}",
            f"{r.final_processes}{unit}",
            f"{r.leaked}{unit}",
            str(r.hang_peak_sessions),
            str(r.hang_refused),
            str(r.hang_peak_connections),
            "—" if r.success_rate is None else f"{r.success_rate:.1%} ({r.healthy_ok})",
            seconds(r.latency_median),
            seconds(r.latency_p95),
            "—" if r.cpu_per_snapshot is None else f"{r.cpu_per_snapshot:.3f}",
            str(sum(r.errors.values())),
        )
    console.print(table)
    for r in results:
        if r.errors:
            raised = ", ".join(f"{count} {name}" for name, count in sorted(r.errors.items()))
            console.print(f"{r.name} raised: {raised}")
        if r.unit == "threads" and r.leaked:
            console.print(
                f"{r.name}: {r.leaked} capture threads still ran {QUIET_WITHIN:g} s after its "
                f"last cycle; the last one ended after {r.drained_after:.0f} s"
            )
    console.print(
        f"ffmpeg {meta['ffmpeg_version']} ({meta['ffmpeg_path']}); {meta['cpus']} CPUs, "
        f"load average {meta['load_before']} before, {meta['load_after']} after"
    )


async def bench(args: argparse.Namespace) -> tuple[list[RowResult], dict[str, Any]]:
    """Start the simulator, run the chosen rows in order, return their results and metadata."""
    ffmpeg = await asyncio.to_thread(find_ffmpeg)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = []
    async with Simulator(sim_cameras(args.fault), control_port=None) as sim:
        for key in args.rows:
            results.append(await run_row(sim, key, args, ffmpeg))
    meta = {
        "cycles": args.cycles,
        "interval": args.interval,
        "deadline": args.deadline,
        "concurrency": args.concurrency,
        "fault": args.fault,
        "probe": args.probe,
        "description": f"{CAMERAS} cameras, {HANGING} {args.fault}, deadline "
        f"{args.deadline:g} s, interval {args.interval:g} s, {args.concurrency} at a time, "
        f"{args.probe} probing",
        "ffmpeg_path": ffmpeg.path,
        "ffmpeg_version": ffmpeg.version,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    return results, meta


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=60, help="cycles per row (60 ≈ 5 min)")
    parser.add_argument("--rows", default="a,b,c,d", help="rows to run, in order: a,b,c,d")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between cycles")
    parser.add_argument("--deadline", type=float, default=2.0, help="capture deadline, seconds")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="captures at once (every row the same)"
    )
    parser.add_argument(
        "--fault",
        default="hang_after_accept",
        choices=["hang_after_accept", "hang_describe", "hang_play"],
        help="what the hanging camera does (hang_play holds a session, so refusals show)",
    )
    parser.add_argument(
        "--probe",
        default="short",
        choices=sorted(PROBES),
        help="input probing of rows (a)-(c): short (campatrol's analyzeduration) or default",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    args.rows = [key.strip() for key in args.rows.split(",") if key.strip()]
    unknown = [key for key in args.rows if key not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {', '.join(unknown)}; choose from a,b,c,d")
    if args.cycles < 1 or args.concurrency < 1 or args.deadline <= 0 or args.interval <= 0:
        parser.error("--cycles and --concurrency must be >= 1, --deadline and --interval > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    results, meta = asyncio.run(bench(args))
    if args.json:
        print(json.dumps({"meta": meta, "rows": [asdict(r) for r in results]}, indent=2))
    else:
        render(results, meta, Console(width=max(Console().width, 150)))


if __name__ == "__main__":
    main()
