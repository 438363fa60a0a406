"""Long run: thousands of failing captures leave memory, file descriptors and threads flat.

50 simulated cameras that refuse connections or hang after accept are patrolled by a real
Service with real ffmpeg until the wanted number of capture attempts is reached. The default
run is short enough for CI; CAMPATROL_FULL=1 runs the 10,000 attempts of issue 4.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.service import Service
from campatrol.sim import SimCameraConfig
from simhelpers import running_sim

FULL = os.environ.get("CAMPATROL_FULL") == "1"
ATTEMPTS = 10_000 if FULL else 300  # 300 take ~25 s on a shared 2-core box
CAMERAS = 50
HANGING = 10  # the rest refuse
DEADLINE = 1.0
# Generous bounds on growth from the first cycle to the end: a leak of one fd, thread or
# process per capture would blow through them within the short run already.
MAX_RSS_GROWTH = 64 * 1024 * 1024
MAX_FD_GROWTH = 16
MAX_THREAD_GROWTH = 8


@dataclass(frozen=True)
class Figures:
    """Resource figures of this process (Service and in-process simulator) at one moment."""

    attempts: int
    rss: int
    fds: int
    threads: int
    children: int

    def line(self, label: str) -> str:
        return (
            f"{label:>6}: attempts={self.attempts:>6} rss={self.rss / 2**20:6.1f} MiB"
            f" fds={self.fds:>4} threads={self.threads:>3} children={self.children}"
        )


def measure(attempts: int) -> Figures:
    me = psutil.Process()
    return Figures(
        attempts, me.memory_info().rss, me.num_fds(), me.num_threads(), len(me.children())
    )


@pytest.mark.slow
@pytest.mark.timeout(3600 if FULL else 240)
async def test_failing_captures_keep_rss_fds_and_threads_flat(tmp_path: Path) -> None:
    sims = [
        SimCameraConfig(
            id=f"dead{i}",
            host=f"127.0.74.{i + 1}",
            port=0,
            width=160,
            height=96,
            fault="hang_after_accept" if i < HANGING else None,
        )
        for i in range(CAMERAS)
    ]
    # Failing cameras are retried every cycle: backoff squeezed to ~10 ms.
    settings = Settings(
        data_dir=tmp_path,
        subnet_concurrency=8,
        max_processes=8,
        slot_wait=1.0,
        backoff_base=0.01,
        backoff_max=0.01,
    )
    async with running_sim(sims) as sim:
        for camera in sim.cameras()[HANGING:]:
            camera.set_fault("refuse")
        cameras = [
            Camera(
                id=c.id,
                host=c.config.host,
                port=c.port,
                path="/stream1",
                deadline=DEADLINE,
                hold_after_kill=0.0,
            )
            for c in sim.cameras()
        ]
        async with Service(settings, cameras) as service:
            (patrol,) = service.patrols.values()
            attempts = 0
            figures: list[tuple[str, Figures]] = []
            leaks = 0
            started = time.monotonic()
            while attempts < ATTEMPTS:
                stats = await patrol.run_cycle()
                attempts += stats.visited
                leaks += stats.leaks
                assert stats.succeeded == 0
                if not figures:
                    figures.append(("start", measure(attempts)))  # after warm-up
                elif len(figures) == 1 and attempts >= ATTEMPTS // 2:
                    figures.append(("middle", measure(attempts)))
            figures.append(("end", measure(attempts)))
            elapsed = time.monotonic() - started
            counters = service.supervisor.counters
            children_left = service.supervisor.children()

        stats_by_camera = [c.stats() for c in sim.cameras()]

    print()
    for label, figure in figures:
        print(figure.line(label))
    print(f"{attempts} attempts in {elapsed:.0f}s; spawned={counters.spawned}")

    start, end = figures[0][1], figures[-1][1]
    assert attempts >= ATTEMPTS
    assert counters.spawned == counters.exited >= ATTEMPTS
    assert leaks == 0
    assert children_left == []
    assert end.children == 0
    assert end.rss - start.rss <= MAX_RSS_GROWTH
    assert end.fds - start.fds <= MAX_FD_GROWTH
    assert end.threads - start.threads <= MAX_THREAD_GROWTH
    assert all(s["peak_sessions"] <= s["max_sessions"] for s in stats_by_camera)
    assert all(s["refused"] == 0 for s in stats_by_camera)
