"""Supervisor behaviour against real child processes: deadlines, kills, reaping, limits, orphans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pytest

from campatrol.errors import SupervisorClosed, SupervisorError
from campatrol.procgroups import MARKER_VAR, parse_marker
from campatrol.supervisor import Supervisor, SupervisorEvent


def running(pid: int) -> bool:
    """Return whether `pid` is a live process (a zombie left to a non-reaping init is not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_not_running(pid: int, within: float) -> bool:
    end = time.monotonic() + within
    while running(pid):
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


def spawned_event(supervisor: Supervisor, count: int = 1) -> asyncio.Event:
    """Return an event set once `count` children have been spawned."""
    event = asyncio.Event()
    seen: list[int] = []

    def hook(ev: SupervisorEvent) -> None:
        if ev.kind == "spawned":
            seen.append(ev.pid or 0)
            if len(seen) >= count:
                event.set()

    supervisor.on_event(hook)
    return event


def kill_if_running(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(20)
async def test_deadline_terminates_and_reaps_a_sleeping_child():
    async with Supervisor(max_processes=2) as sup:
        result = await sup.run(["sleep", "60"], deadline=0.5, purpose="test")

    assert result.timed_out is True
    assert result.killed_by == "deadline"
    assert result.returncode == -signal.SIGTERM
    assert not psutil.pid_exists(result.pid)
    assert sup.counters.killed[("SIGTERM", "deadline")] == 1
    assert sup.children() == []


@pytest.mark.timeout(20)
async def test_child_ignoring_sigterm_is_killed_after_grace():
    argv = ["sh", "-c", "trap '' TERM; sleep 60"]
    async with Supervisor(max_processes=2) as sup:
        result = await sup.run(argv, deadline=1.0, purpose="test", grace=0.5)

    assert result.killed_by == "deadline"
    assert result.returncode == -signal.SIGKILL
    assert sup.counters.killed[("SIGTERM", "deadline")] == 1
    assert sup.counters.killed[("SIGKILL", "deadline")] == 1
    assert not psutil.pid_exists(result.pid)


@pytest.mark.timeout(20)
async def test_grandchild_holding_stdout_ends_by_the_deadline():
    # The grandchild inherits stdout, so pipe EOF alone would never come.
    argv = ["sh", "-c", "sleep 60 & echo $!; wait"]
    async with Supervisor(max_processes=2) as sup:
        result = await sup.run(argv, deadline=1.0, purpose="test", grace=0.5)

    grandchild = int(result.stdout.split()[0])
    assert result.killed_by == "deadline"
    assert await wait_not_running(grandchild, 1.0)


@pytest.mark.timeout(20)
async def test_leftover_grandchild_is_ended_when_the_child_exits():
    argv = ["sh", "-c", "sleep 60 & echo $!"]
    async with Supervisor(max_processes=2) as sup:
        result = await sup.run(argv, deadline=30, purpose="test", grace=0.5)

    grandchild = int(result.stdout.split()[0])
    assert result.returncode == 0
    assert result.killed_by is None
    assert result.duration < 30
    assert sup.counters.killed[("SIGTERM", "leftover")] == 1
    assert await wait_not_running(grandchild, 1.0)


@pytest.mark.timeout(20)
async def test_cancelling_run_kills_and_reaps_the_child_before_raising():
    async with Supervisor(max_processes=2) as sup:
        started = spawned_event(sup)
        task = asyncio.create_task(sup.run(["sleep", "60"], deadline=60, purpose="test"))
        await started.wait()
        pid = sup.children()[0].pid
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert not psutil.pid_exists(pid)
        assert sup.running == 0
        assert sup.counters.killed[("SIGTERM", "cancel")] == 1


@pytest.mark.timeout(20)
async def test_second_cancel_does_not_interrupt_the_cleanup():
    argv = ["sh", "-c", "trap '' TERM; sleep 60"]
    async with Supervisor(max_processes=2) as sup:
        started = spawned_event(sup)
        task = asyncio.create_task(sup.run(argv, deadline=60, purpose="test", grace=0.5))
        await started.wait()
        pid = sup.children()[0].pid
        await asyncio.sleep(0.2)  # let sh install its trap
        task.cancel()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert not psutil.pid_exists(pid)
        assert sup.counters.killed[("SIGKILL", "cancel")] == 1


@pytest.mark.timeout(20)
async def test_terminate_stops_a_child_by_pid_and_names_the_reason():
    async with Supervisor(max_processes=2) as sup:
        started = spawned_event(sup)
        task = asyncio.create_task(sup.run(["sleep", "60"], deadline=60, purpose="test"))
        await started.wait()
        pid = sup.children()[0].pid

        assert await sup.terminate(pid, reason="leak") is True
        assert not psutil.pid_exists(pid)
        result = await task
        assert await sup.terminate(pid, reason="leak") is False

    assert result.killed_by == "leak"
    assert sup.counters.killed[("SIGTERM", "leak")] == 1


@pytest.mark.timeout(60)
async def test_two_hundred_immediate_exits_twenty_at_a_time_leave_no_zombie():
    async with Supervisor(max_processes=20) as sup:
        results = await asyncio.gather(
            *(sup.run(["true"], deadline=10, purpose="test") for _ in range(200))
        )

    assert [r.returncode for r in results] == [0] * 200
    assert sup.counters.spawned == 200
    assert sup.counters.exited == 200
    assert psutil.Process().children(recursive=True) == []


@pytest.mark.timeout(20)
async def test_runs_beyond_max_processes_queue_until_a_child_ends():
    sup = Supervisor(max_processes=2)
    started = spawned_event(sup, count=2)
    third_started = spawned_event(sup, count=3)
    tasks = [
        asyncio.create_task(sup.run(["sleep", "60"], deadline=60, purpose="test")) for _ in range(3)
    ]
    try:
        await started.wait()
        await asyncio.sleep(0.1)
        assert (sup.running, sup.queued) == (2, 1)

        first = sup.children()[0].pid
        os.kill(first, signal.SIGKILL)  # an exit frees capacity for the queued run
        await third_started.wait()
        assert (sup.running, sup.queued) == (2, 0)
    finally:
        await sup.close()
    results = await asyncio.gather(*tasks)
    assert sorted(r.killed_by or "exited" for r in results) == ["exited", "shutdown", "shutdown"]


@pytest.mark.timeout(20)
async def test_close_kills_every_child_and_fails_queued_runs():
    sup = Supervisor(max_processes=3)
    started = spawned_event(sup, count=3)
    tasks = [
        asyncio.create_task(sup.run(["sleep", "60"], deadline=60, purpose="test")) for _ in range(4)
    ]
    await started.wait()
    pids = [c.pid for c in sup.children()]
    await sup.close()

    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r.killed_by for r in outcomes[:3]] == ["shutdown"] * 3
    assert isinstance(outcomes[3], SupervisorClosed)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    with pytest.raises(SupervisorClosed):
        await sup.run(["true"], deadline=1, purpose="test")


@pytest.mark.timeout(20)
async def test_stdout_beyond_the_limit_stops_the_child():
    async with Supervisor(max_processes=1) as sup:
        result = await sup.run(["yes"], deadline=10, purpose="test", stdout_limit=10_000)

    assert result.killed_by == "stdout_limit"
    assert len(result.stdout) == 10_000
    assert not psutil.pid_exists(result.pid)


@pytest.mark.timeout(20)
async def test_secrets_are_masked_in_registry_and_stderr_tail():
    argv = ["sh", "-c", "echo 'login hunter2 failed' >&2; sleep 60", "hunter2"]
    async with Supervisor(max_processes=1) as sup:
        started = spawned_event(sup)
        task = asyncio.create_task(
            sup.run(argv, deadline=0.5, purpose="test", camera_id="cam1", secrets=["hunter2"])
        )
        await started.wait()
        [info] = sup.children()
        result = await task

    assert info.camera_id == "cam1"
    assert info.masked_argv[-1] == "***"
    assert "hunter2" not in " ".join(info.masked_argv)
    assert result.stderr_tail == "login *** failed"


@pytest.mark.timeout(20)
async def test_child_environment_carries_the_instance_marker():
    async with Supervisor(max_processes=1, instance_id="abc123") as sup:
        result = await sup.run(["sh", "-c", f"echo ${MARKER_VAR}"], deadline=5, purpose="test")

    assert parse_marker(result.stdout.decode().strip()) == ("abc123", os.getpid())


@pytest.mark.timeout(20)
async def test_spawn_failure_raises_and_frees_capacity():
    async with Supervisor(max_processes=1) as sup:
        with pytest.raises(SupervisorError, match="no-such-binary"):
            await sup.run(["/nonexistent/no-such-binary"], deadline=5, purpose="test")
        result = await sup.run(["true"], deadline=5, purpose="test")

    assert result.returncode == 0
    assert sup.counters.spawn_failures == 1


HELPER = textwrap.dedent(
    """
    import asyncio, sys
    from campatrol.supervisor import Supervisor

    async def main():
        sup = Supervisor(max_processes=1)
        task = asyncio.create_task(sup.run(["sleep", "60"], deadline=60, purpose="pdeath"))
        while not sup.children():
            await asyncio.sleep(0.01)
        print(sup.children()[0].pid, flush=True)
        await task

    asyncio.run(main())
    """
)


@pytest.mark.timeout(30)
async def test_children_die_with_their_parent():
    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HELPER, stdout=asyncio.subprocess.PIPE
    )
    sleeper = 0
    try:
        sleeper = int(await asyncio.wait_for(helper.stdout.readline(), 20))
        assert running(sleeper)

        helper.kill()
        await helper.wait()
        assert await wait_not_running(sleeper, 2.0)
    finally:
        if helper.returncode is None:
            helper.kill()
            await helper.wait()
        if sleeper:
            kill_if_running(sleeper)


def start_marked_sleeper(marker: str) -> int:
    """Start `sleep 60` carrying `marker`, re-parented away from us the way a crash leaves it."""
    script = (
        "import os, subprocess, sys\n"
        "env = dict(os.environ, "
        + MARKER_VAR
        + "=sys.argv[1].replace('{pid}', str(os.getpid())))\n"
        "p = subprocess.Popen(['sleep', '60'], env=env, start_new_session=True,\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, marker], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.timeout(30)
async def test_sweep_ends_orphans_of_dead_instances_only():
    dead_owner = start_marked_sleeper(f"{uuid.uuid4().hex}:{{pid}}")
    live_owner = start_marked_sleeper(f"{uuid.uuid4().hex}:{os.getpid()}")
    unmarked = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        async with Supervisor(max_processes=1) as sup:
            ended = await sup.sweep_orphans(sup.instance_id)

        assert dead_owner in ended
        assert live_owner not in ended
        assert unmarked.pid not in ended
        assert await wait_not_running(dead_owner, 1.0)
        assert running(live_owner)
        assert unmarked.returncode is None
    finally:
        for pid in (dead_owner, live_owner):
            kill_if_running(pid)
        unmarked.kill()
        await unmarked.wait()
