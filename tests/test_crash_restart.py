"""Crashes and restarts: orphans of a dead instance, the watchdog, and the child subreaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.ffmpeg import find_ffmpeg
from campatrol.procgroups import MARKER_VAR, become_subreaper
from campatrol.service import Service
from campatrol.sim import SimCameraConfig
from campatrol.supervisor import Supervisor, SupervisorEvent
from simhelpers import Client, ffmpeg_stream_argv, running_sim, wait_for

HOST = "127.0.72.1"

# A stand-in campatrol instance: starts `count` copies of argv[3:] in sessions of their own
# carrying its marker, prints their pids, and dies when its stdin closes, without ending them:
# what a crashed campatrol whose parent-death signal was lost leaves behind.
_DYING_OWNER = (
    "import os, subprocess, sys\n"
    f"env = dict(os.environ, {MARKER_VAR}=sys.argv[1] + ':' + str(os.getpid()))\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    p = subprocess.Popen(sys.argv[3:], env=env, start_new_session=True,\n"
    "                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
    "                         stderr=subprocess.DEVNULL)\n"
    "    print(p.pid, flush=True)\n"
    "sys.stdin.read()\n"
)


def running(pid: int) -> bool:
    """Whether `pid` lives (a zombie left to a non-reaping init does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class DyingOwner:
    """Starts marked processes as a campatrol instance would; `die()` turns them into orphans.

    The owner stays alive until just before the server under test starts: campatrol instances
    that other test runs start on the same host meanwhile sweep orphans too and would take ours.
    """

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.pids: list[int] = []

    async def start(self, argv: list[str], count: int) -> list[int]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DYING_OWNER,
            uuid.uuid4().hex,
            str(count),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        for _ in range(count):
            self.pids.append(int(await asyncio.wait_for(self.proc.stdout.readline(), 30)))
        return self.pids

    async def die(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            await self.proc.wait()

    async def cleanup(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
        await self.die()
        for pid in self.pids:
            end_if_running(pid)


def end_if_running(pid: int) -> None:
    """Test cleanup: SIGKILL a process this test started, by its pid."""
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# Other campatrol instances on the same host (parallel test runs on a shared machine) sweep
# orphans of dead instances too and may end ours before the server under test looks; such a
# try proves nothing and is repeated. A single run (CI) never needs a second try.
SWEEP_TRIES = 3


@pytest.mark.timeout(90)
async def test_restart_ends_orphans_of_a_dead_instance_and_frees_their_sessions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sims = [SimCameraConfig(id="door", host=HOST, port=0, width=160, height=96, max_sessions=3)]
    ffmpeg = find_ffmpeg()
    async with running_sim(sims) as sim:
        door = sim.camera("door")
        camera = Camera(id="door", host=HOST, port=door.port, path="/stream1", max_sessions=1)
        # An unmarked ffmpeg (someone else's) streams the camera all along: it must survive.
        async with Client(ffmpeg_stream_argv(door.url())) as foreign:
            for attempt in range(SWEEP_TRIES):
                owner = DyingOwner()
                try:
                    # Two orphans of a crashed instance stream the camera.
                    orphans = await owner.start(ffmpeg_stream_argv(door.url()), 2)
                    await wait_for(lambda: door.stats()["streaming"] == 3, within=20)
                    await owner.die()
                    caplog.clear()
                    settings = Settings(data_dir=tmp_path / str(attempt), slot_wait=0.5)
                    with caplog.at_level(logging.WARNING, logger="campatrol.service"):
                        async with Service(settings, [camera], ffmpeg=ffmpeg) as service:
                            ended = list(service.orphans_ended)
                            if not set(orphans) <= set(ended):
                                continue  # another instance swept first (see SWEEP_TRIES)
                            # Their SIGTERM made ffmpeg send TEARDOWN: the slots are free.
                            await wait_for(lambda: door.stats()["sessions"] == 1, within=5)
                            record = await service.capture_now("door")
                finally:
                    await owner.cleanup()
                break
            else:
                pytest.fail(f"other instances swept our orphans first {SWEEP_TRIES} times")
            assert foreign.running
            assert foreign.proc is not None and foreign.proc.pid not in ended

    # Orphans other runs on this host left behind are fair game for the sweep too, so ours
    # must be among the ended ones rather than be all of them.
    assert not any(running(pid) for pid in orphans)
    assert record.bytes > 0
    assert f"ended {len(ended)} orphan process(es) of a dead campatrol instance" in caplog.text
    assert door.stats()["peak_sessions"] <= 3


@pytest.mark.timeout(30)
async def test_watchdog_stops_a_child_that_escaped_its_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # enforce_deadlines=False is the supervisor's explicit test seam standing in for the bug
    # (a deadline that was never enforced) that the watchdog exists to catch.
    events: list[SupervisorEvent] = []
    async with Supervisor(max_processes=2, enforce_deadlines=False) as sup:
        sup.on_event(events.append)
        with caplog.at_level(logging.ERROR, logger="campatrol.supervisor"):
            async with asyncio.TaskGroup() as tg:
                watchdog = tg.create_task(sup.watchdog(interval=0.1, margin=0.2))
                result = await sup.run(["sleep", "30"], deadline=0.3, purpose="test", grace=0.3)
                watchdog.cancel()

    assert result.killed_by == "watchdog"
    assert result.duration < 5
    assert sup.counters.watchdog_kills == 1
    assert sup.counters.killed[("SIGTERM", "watchdog")] == 1
    assert [(e.kind, e.reason) for e in events if e.kind == "killed"] == [("killed", "watchdog")]
    assert "watchdog stops it" in caplog.text
    assert not running(result.pid)


@pytest.mark.timeout(30)
async def test_watchdog_leaves_deadline_stops_to_the_supervisor() -> None:
    async with Supervisor(max_processes=2) as sup, asyncio.TaskGroup() as tg:
        watchdog = tg.create_task(sup.watchdog(interval=0.05, margin=0.0))
        result = await sup.run(["sleep", "30"], deadline=0.3, purpose="test", grace=0.5)
        watchdog.cancel()

    assert result.killed_by == "deadline"
    assert sup.counters.watchdog_kills == 0


@pytest.mark.timeout(30)
async def test_subreaper_reaps_a_grandchild_that_left_its_group() -> None:
    # The grandchild is in a session of its own: the group kill cannot reach it and it outlives
    # its parent. As a subreaper we become its parent, and the watchdog reaps it once it exits.
    # (Popen returns only after the grandchild's setsid and exec, so no race with the group.)
    spawn = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '1'], start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid)\n"
    )
    argv = [sys.executable, "-c", spawn]
    assert become_subreaper()
    grandchild = 0
    try:
        async with Supervisor(max_processes=2) as sup, asyncio.TaskGroup() as tg:
            watchdog = tg.create_task(sup.watchdog(interval=0.1))
            result = await sup.run(argv, deadline=10, purpose="test")
            grandchild = int(result.stdout.split()[0])
            adopted_by_us = psutil.Process(grandchild).ppid() == os.getpid()
            await wait_for(lambda: not psutil.pid_exists(grandchild), within=5)
            watchdog.cancel()
    finally:
        become_subreaper(False)
        if grandchild:
            end_if_running(grandchild)

    assert result.returncode == 0
    assert adopted_by_us
    assert not psutil.pid_exists(grandchild)
    assert sup.counters.adopted_reaped == 1


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


async def run_server_once(config: Path, listen: str, port: int) -> tuple[str, str, int]:
    """Start `campatrol run`, read /metrics once it serves, SIGTERM it; return log, metrics, rc."""
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campatrol",
        "run",
        "--config",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert server.stderr is not None
        log = ""
        while "serving http://" not in log:
            line = await asyncio.wait_for(server.stderr.readline(), 60)
            assert line, f"campatrol run exited: {log}"
            log += line.decode()
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = (await client.get(f"http://{listen}:{port}/metrics")).text
        server.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(server.wait(), 30)
        log += (await server.stderr.read()).decode()
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGKILL)
            await server.wait()
    return log, metrics, returncode


ENDED_LINE = re.compile(
    r"ended (\d+) orphan process\(es\) of a dead campatrol instance: \[([\d, ]*)\]"
)


@pytest.mark.timeout(120)
async def test_campatrol_run_ends_orphans_at_start_and_counts_them(tmp_path: Path) -> None:
    listen = "127.0.72.9"
    port = free_port(listen)
    sims = [SimCameraConfig(id="yard", host="127.0.72.2", port=0, width=160, height=96)]
    async with running_sim(sims) as sim:
        yard = sim.camera("yard")
        config = tmp_path / "campatrol.toml"
        config.write_text(
            f'[server]\nlisten = "{listen}"\nport = {port}\ndata_dir = "{tmp_path / "data"}"\n'
            f'interval = 600\nbackoff_max = 600\n\n[[cameras]]\nid = "yard"\n'
            f'host = "127.0.72.2"\nport = {yard.port}\npath = "/stream1"\nmax_sessions = 2\n',
            encoding="utf-8",
        )
        for _ in range(SWEEP_TRIES):
            owner = DyingOwner()
            try:
                orphans = await owner.start(ffmpeg_stream_argv(yard.url()), 2)
                await wait_for(lambda: yard.stats()["streaming"] == 2, within=20)
                await owner.die()
                log, metrics, returncode = await run_server_once(config, listen, port)
            finally:
                await owner.cleanup()
            ended = ENDED_LINE.search(log)
            if ended and set(orphans) <= {int(pid) for pid in ended.group(2).split(", ")}:
                break
            # Another instance swept first (see SWEEP_TRIES): then nothing may be left either.
            assert not any(running(pid) for pid in orphans)
        else:
            pytest.fail(f"other instances swept our orphans first {SWEEP_TRIES} times")
        # The orphans' TEARDOWN freed the camera, and the stopped server's capture ended.
        await wait_for(lambda: yard.stats()["sessions"] == 0, within=10)

    assert not any(running(pid) for pid in orphans)
    counted = re.search(r"^\w*orphans_ended_total (\S+)$", metrics, re.MULTILINE)
    assert counted is not None, metrics[-2000:]
    assert float(counted.group(1)) == int(ended.group(1))
    assert returncode == 0
    assert yard.stats()["peak_sessions"] <= 2
