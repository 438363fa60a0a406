"""Measure the camera simulator: CPU, RSS and start-up for idle and streaming cameras.

    .venv/bin/python bench/sim_bench.py [--idle 1000] [--streaming 10 50] [--seconds 20]

Runs `campatrol sim` as a child process on 127.1.x.y (so it does not collide with a simulator
on 127.0.x.y), reads 1080p15 main streams with real ffmpeg clients (-c copy, one per camera),
and prints one line per scenario. Everything it starts is ended by pid before it returns.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from campatrol.ffmpeg import find_ffmpeg

_CONTROL = re.compile(r"control at (http://\S+)")


def write_config(path: Path, count: int, width: int, height: int) -> None:
    """Write a simulator config of `count` Tapo-like cameras spread over 127.1.S.H."""
    lines = [
        "[control]",
        'host = "127.0.0.1"',
        "port = 0",
        "[defaults]",
        f"width = {width}",
        f"height = {height}",
        "fps = 15",
        "gop = 15",
    ]
    for index in range(count):
        subnet, host = index // 250 + 1, index % 250 + 1
        lines += ["[[cameras]]", f'id = "b{index}"', f'host = "127.1.{subnet}.{host}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_sim(config: Path) -> tuple[subprocess.Popen[str], float]:
    """Start the simulator; return it and its start-up time (until the control API is up)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "campatrol", "sim", "--config", str(config), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if _CONTROL.search(line):
            break
    else:
        raise RuntimeError("campatrol sim exited during start-up")
    elapsed = time.monotonic() - started
    # Keep draining its output so that it can never block on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, elapsed


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM a child's process group, SIGKILL after 10 s, and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(pid: int, seconds: float) -> tuple[float, float]:
    """Return (CPU % of one core, RSS MiB) of a process over `seconds`."""
    process = psutil.Process(pid)
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / seconds, process.memory_info().rss / 2**20


def run_idle(count: int, seconds: float, work: Path) -> str:
    """Scenario: `count` idle cameras."""
    config = work / f"idle{count}.toml"
    write_config(config, count, 1920, 1080)
    proc, startup = start_sim(config)
    try:
        cpu, rss = measure(proc.pid, seconds)
    finally:
        stop(proc)
    return (
        f"idle      {count:5d} cameras: start-up {startup:5.1f} s, CPU {cpu:5.1f} %, "
        f"RSS {rss:6.1f} MiB"
    )


def run_streaming(count: int, seconds: float, work: Path) -> str:
    """Scenario: `count` cameras, each streaming 1080p15 to one ffmpeg client."""
    config = work / f"stream{count}.toml"
    write_config(config, count, 1920, 1080)
    proc, startup = start_sim(config)
    ffmpeg = find_ffmpeg().path
    clients: list[subprocess.Popen[bytes]] = []
    stream_seconds = seconds + 5
    try:
        for index in range(count):
            url = f"rtsp://127.1.{index // 250 + 1}.{index % 250 + 1}:8554/stream1"
            argv = [ffmpeg, "-nostdin", "-loglevel", "error", "-rtsp_transport", "tcp"]
            argv += ["-i", url, "-t", str(stream_seconds), "-c", "copy", "-f", "null", "-"]
            clients.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        last_started = time.monotonic()
        time.sleep(3)  # let every client finish probing before measuring the steady state
        cpu, rss = measure(proc.pid, seconds)
        # A client ends when it has received `stream_seconds` of stream time; if the simulator
        # fell behind real time, that takes longer than `stream_seconds` of wall time.
        codes = [client.wait(stream_seconds * 3) for client in clients]
        wall = time.monotonic() - last_started
    finally:
        for client in clients:
            stop(client)
        stop(proc)
    failed = sum(1 for code in codes if code != 0)
    return (
        f"streaming {count:5d} cameras: start-up {startup:5.1f} s, CPU {cpu:5.1f} %, "
        f"RSS {rss:6.1f} MiB, {stream_seconds:.0f} s of video took {wall:.1f} s wall "
        "after the last client started, "
        f"{failed} clients failed"
    )


def main() -> None:
    """Run the scenarios given on the command line and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--streaming", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="campatrol-sim-bench-") as work:
        if args.idle:
            print(run_idle(args.idle, args.seconds, Path(work)), flush=True)
        for count in args.streaming:
            print(run_streaming(count, args.seconds, Path(work)), flush=True)


if __name__ == "__main__":
    main()
