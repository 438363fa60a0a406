"""Crashes and restarts: orphans of a dead instance, the watchdog, and the child subreaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.procgroups import MARKER_VAR, become_subreaper
from campatrol.service import Service
from campatrol.sim import SimCameraConfig
from campatrol.supervisor import Supervisor, SupervisorEvent
from simhelpers import Client, ffmpeg_stream_argv, running_sim, wait_for

HOST = "127.0.72.1"

# Starts argv[2:] in its own session carrying the marker of this (soon dead) helper, prints the
# pid and exits without waiting: what a crashed campatrol whose parent-death signal was lost
# leaves behind.
_ORPHAN_MAKER = (
    "import os, subprocess, sys\n"
    f"env = dict(os.environ, {MARKER_VAR}=sys.argv[1] + ':' + str(os.getpid()))\n"
    "p = subprocess.Popen(sys.argv[2:], env=env, start_new_session=True,\n"
    "                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
    "                     stderr=subprocess.DEVNULL)\n"
    "print(p.pid, flush=True)\n"
)


def running(pid: int) -> bool:
    """Whether `pid` lives (a zombie left to a non-reaping init does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_orphan(instance: str, argv: list[str]) -> int:
    """Start `argv` as the orphan of a dead campatrol instance; return its pid."""
    out = subprocess.run(
        [sys.executable, "-c", _ORPHAN_MAKER, instance, *argv],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(out.stdout)


def end_if_running(pid: int) -> None:
    """Test cleanup: SIGKILL a process this test started, by its pid."""
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
async def test_restart_ends_orphans_of_a_dead_instance_and_frees_their_sessions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sims = [SimCameraConfig(id="door", host=HOST, port=0, width=160, height=96, max_sessions=3)]
    orphans: list[int] = []
    async with running_sim(sims) as sim:
        door = sim.camera("door")
        url = door.url()
        try:
            # Two orphans of a crashed instance streaming the camera, and one unmarked ffmpeg
            # (someone else's) that must be left alone.
            dead = uuid.uuid4().hex
            orphans = [start_orphan(dead, ffmpeg_stream_argv(url)) for _ in range(2)]
            async with Client(ffmpeg_stream_argv(url)) as foreign:
                await wait_for(lambda: door.stats()["streaming"] == 3, within=20)
                camera = Camera(
                    id="door", host=HOST, port=door.port, path="/stream1", max_sessions=1
                )
                settings = Settings(data_dir=tmp_path, slot_wait=0.5)
                with caplog.at_level(logging.WARNING, logger="campatrol.service"):
                    async with Service(settings, [camera]) as service:
                        ended = sorted(service.orphans_ended)
                        # Their SIGTERM made ffmpeg send TEARDOWN: the camera's slots are free.
                        await wait_for(lambda: door.stats()["sessions"] == 1, within=5)
                        record = await service.capture_now("door")
                assert foreign.running
                assert not foreign.proc or foreign.proc.pid not in ended

            # Orphans that other test runs on this host left behind are fair game for the sweep
            # too, so ours must be among the ended ones rather than be all of them.
            assert set(orphans) <= set(ended)
            assert not any(running(pid) for pid in orphans)
            assert record.bytes > 0
            assert f"ended {len(ended)} orphan process(es) of a dead campatrol instance" in (
                caplog.text
            )
            assert door.stats()["peak_sessions"] <= 3
        finally:
            for pid in orphans:
                end_if_running(pid)


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
