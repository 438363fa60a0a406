"""The single owner of campatrol's child processes: spawn, deadline, stop, reap, registry.

Every child runs in its own process group (new session) with stdin closed, the kernel's
parent-death signal set to SIGKILL, and the environment marker `CAMPATROL_INSTANCE=<uuid>:<pid>`
(the owning instance and the pid of the process that owns it; see procgroups.py) so that a
restarted server can find and end the orphans of a dead one (`sweep_orphans`).

A child is stopped one way only (`_stop`): SIGTERM to its group, `grace` seconds, SIGKILL to the
group, reap; then any process left in the group is ended the same way. `run()` neither returns
nor raises before that is done.

`watchdog()` is the second line of defence: it re-checks the registry every few seconds, stops any
child that outlived its deadline anyway (a bug elsewhere) and reaps zombies re-parented to us
when campatrol is a child subreaper (procgroups.become_subreaper).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from campatrol.errors import SupervisorClosed, SupervisorError
from campatrol.procgroups import (
    MARKER_VAR,
    adopted_zombies,
    end_orphan,
    find_orphans,
    group_alive,
    make_marker,
    make_preexec,
    reap,
    wait_group_gone,
)

logger = logging.getLogger(__name__)

DEFAULT_STDOUT_LIMIT: Final = 16 * 1024 * 1024
STDERR_TAIL_LINES: Final = 40
_STDERR_LINE_MAX: Final = 500  # bytes kept of one stderr line; bounds memory per child
_DRAIN_TIMEOUT: Final = 1.0  # how long to wait for pipe EOF once the group is gone
WATCHDOG_INTERVAL: Final = 2.0
# Seconds beyond deadline + grace before the watchdog steps in: the deadline stop itself must
# have had its chance (scheduling on a loaded 2-core box can delay it by a fraction of this).
WATCHDOG_MARGIN: Final = 1.0


def _mask(text: str, secrets: Iterable[str]) -> str:
    # Lazy import: cameras.py is written in parallel; fall back to plain replacement without it.
    try:
        from campatrol.cameras import mask_secrets
    except ImportError:
        for secret in sorted((s for s in secrets if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text
    return mask_secrets(text, secrets)


@dataclass(frozen=True)
class ProcessResult:
    """How one child process ended, with its output."""

    pid: int
    returncode: int
    stdout: bytes
    stderr_tail: str
    timed_out: bool
    killed_by: str | None  # "deadline", "cancel", "shutdown", "stdout_limit", terminate()'s reason
    started: datetime
    ended: datetime
    duration: float


@dataclass(frozen=True)
class ChildInfo:
    """A live child as the registry shows it; argv has its secrets masked."""

    pid: int
    camera_id: str | None
    purpose: str
    started: datetime
    deadline_at: datetime
    masked_argv: list[str]
    instance_id: str


@dataclass(frozen=True)
class SupervisorEvent:
    """Something a metrics hook may count: kind is spawned, exited, killed or spawn_failed."""

    kind: str
    purpose: str
    camera_id: str | None
    pid: int | None = None
    reason: str | None = None  # why it was killed (kind "killed")
    signal: str | None = None  # "SIGTERM" or "SIGKILL" (kind "killed")
    returncode: int | None = None  # kind "exited"


@dataclass
class SupervisorCounters:
    """Totals since start; `killed` is keyed by (signal name, reason)."""

    spawned: int = 0
    exited: int = 0
    spawn_failures: int = 0
    killed: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    watchdog_kills: int = 0  # children the watchdog found past their deadline (each one a bug)
    adopted_reaped: int = 0  # re-parented zombies reaped as a child subreaper


class _ChildProtocol(asyncio.SubprocessProtocol):
    """Collects a child's output and tells when it exited and when its pipes closed.

    A protocol rather than asyncio.subprocess.Process: Process.wait() on Python 3.11 returns only
    once every pipe is closed, so a grandchild holding stdout would hide the child's exit.
    """

    def __init__(self, stdout_limit: int) -> None:
        self.stdout_limit = stdout_limit
        self.stdout = bytearray()
        self.stderr_lines: collections.deque[bytes] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._stderr_partial = b""
        self.over_limit = asyncio.Event()
        self.exited = asyncio.Event()  # set after asyncio's child watcher reaped the child
        self.pipes_closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            if self.over_limit.is_set():
                return  # keep reading so the child never blocks on a full pipe
            self.stdout += data
            if len(self.stdout) > self.stdout_limit:
                del self.stdout[self.stdout_limit :]
                self.over_limit.set()
        elif fd == 2:
            lines = (self._stderr_partial + data).split(b"\n")
            self._stderr_partial = lines.pop()[:_STDERR_LINE_MAX]
            self.stderr_lines.extend(line[:_STDERR_LINE_MAX] for line in lines)

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipes_closed.set()

    def stderr_tail(self) -> str:
        lines = (
            [*self.stderr_lines, self._stderr_partial]
            if self._stderr_partial
            else self.stderr_lines
        )
        return b"\n".join(lines).decode("utf-8", errors="replace")


@dataclass(eq=False)
class _Child:
    transport: asyncio.SubprocessTransport
    protocol: _ChildProtocol
    info: ChildInfo
    deadline: float  # seconds from start
    grace: float
    secrets: tuple[str, ...]
    started_mono: float
    killed_by: str | None = None
    stop_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.info.pid

    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode()


class Supervisor:
    """Owns every child process: runs each under a deadline and never lets one outlive it.

    Use as `async with Supervisor(max_processes=8) as supervisor:`; leaving the block (or
    `await supervisor.close()`) refuses new children and stops every live one.
    """

    def __init__(
        self,
        max_processes: int,
        instance_id: str | None = None,
        *,
        enforce_deadlines: bool = True,
    ) -> None:
        # enforce_deadlines=False is a test seam only: `run` then ignores deadlines, which
        # stands in for the bug the watchdog exists to catch.
        if max_processes < 1:
            raise ValueError(f"max_processes must be at least 1, got {max_processes}")
        self.max_processes = max_processes
        self.instance_id = instance_id or uuid.uuid4().hex
        self.counters = SupervisorCounters()
        self._children: dict[int, _Child] = {}
        self._reserved = 0  # capacity handed out: live children plus those being spawned
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._hooks: list[Callable[[SupervisorEvent], None]] = []
        self._closed = False
        self._enforce_deadlines = enforce_deadlines
        self._drained = asyncio.Event()  # set when closed and no child is alive or starting

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.instance_id[:8]} running={self.running} queued={self.queued}"
            f" max={self.max_processes}{' closed' if self._closed else ''}>"
        )

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def running(self) -> int:
        """Number of live children."""
        return len(self._children)

    @property
    def queued(self) -> int:
        """Number of `run` calls waiting for the global process limit."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def closed(self) -> bool:
        return self._closed

    def children(self) -> list[ChildInfo]:
        """Return the live children, oldest first."""
        return [child.info for child in self._children.values()]

    def on_event(self, hook: Callable[[SupervisorEvent], None]) -> None:
        """Call `hook` synchronously for every spawn, exit, kill and spawn failure."""
        self._hooks.append(hook)

    async def close(self) -> None:
        """Refuse new children, fail queued `run` calls and stop every live child.

        Returns once every child has been reaped. Safe to call more than once.
        """
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(SupervisorClosed("supervisor is closed"))
        stops = [self._request_stop(child, "shutdown") for child in list(self._children.values())]
        if stops:
            await _await_uninterruptibly(asyncio.gather(*stops))
        # A child spawned while close() ran stops itself (see _watch); wait for its reaping too.
        if self._reserved:
            await _await_uninterruptibly(self._drained.wait())
        else:
            self._drained.set()

    async def terminate(self, pid: int, *, reason: str) -> bool:
        """Stop the live child `pid` the one way (its `run` then returns with killed_by=reason).

        For a watchdog or a leak check; returns False when no live child has that pid. Returns
        once the child has been reaped, even if cancelled meanwhile (then re-raises).
        """
        child = self._children.get(pid)
        if child is None:
            return False
        await _await_uninterruptibly(self._request_stop(child, reason))
        return True

    async def run(
        self,
        argv: Sequence[str],
        *,
        deadline: float,
        purpose: str,
        camera_id: str | None = None,
        secrets: Sequence[str] = (),
        stdout_limit: int = DEFAULT_STDOUT_LIMIT,
        grace: float = 2.0,
    ) -> ProcessResult:
        """Run `argv` as a supervised child and return how it ended.

        Waits in FIFO order while `max_processes` children are alive (callers bound that wait
        with their own timeout); `deadline` seconds count from the start of the process. When it
        passes, or when stdout exceeds `stdout_limit`, the child's group is stopped and the result
        says so. Cancellation stops and reaps the child before CancelledError propagates.
        Raises SupervisorClosed after close(), SupervisorError when the spawn fails.
        """
        if deadline <= 0:
            raise ValueError(f"deadline must be positive, got {deadline}")
        if not argv:
            raise ValueError("argv must not be empty")
        await self._acquire_capacity()
        try:
            child = await self._spawn(
                list(argv), deadline, purpose, camera_id, tuple(secrets), stdout_limit, grace
            )
        except BaseException:
            self._release_capacity()
            raise

        try:
            reason = await self._watch(child)
        except asyncio.CancelledError:
            await _await_uninterruptibly(self._finish(child, "cancel"))
            raise
        await _await_uninterruptibly(self._finish(child, reason))
        return self._result(child)

    async def _acquire_capacity(self) -> None:
        if self._closed:
            raise SupervisorClosed("supervisor is closed")
        if self._reserved < self.max_processes and not self.queued:
            self._reserved += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release_capacity()  # granted just as we were cancelled: pass it on
            else:
                # _release_capacity may already have dropped it as done.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release_capacity(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the reservation moves to the waiter
                return
        self._reserved -= 1
        if self._closed and self._reserved == 0:
            self._drained.set()

    async def _spawn(
        self,
        argv: list[str],
        deadline: float,
        purpose: str,
        camera_id: str | None,
        secrets: tuple[str, ...],
        stdout_limit: int,
        grace: float,
    ) -> _Child:
        env = dict(os.environ)
        env[MARKER_VAR] = make_marker(self.instance_id)
        masked_argv = [_mask(arg, secrets) for arg in argv]
        try:
            # Called from the event-loop thread, which lives as long as the loop: the
            # parent-death signal fires when the forking *thread* exits.
            # Limitation: a cancel during this await is handled by asyncio, which SIGKILLs the
            # new child alone (not its group) and reaps it; a fresh child has no group yet.
            transport, protocol = await asyncio.get_running_loop().subprocess_exec(
                lambda: _ChildProtocol(stdout_limit),
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                preexec_fn=make_preexec(os.getpid()),
            )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.counters.spawn_failures += 1
            self._emit(SupervisorEvent("spawn_failed", purpose, camera_id))
            masked = _mask(str(exc), secrets)
            raise SupervisorError(f"{purpose}: could not start {masked_argv[0]}: {masked}") from exc

        now = datetime.now(UTC)
        pid = transport.get_pid()
        info = ChildInfo(
            pid=pid,
            camera_id=camera_id,
            purpose=purpose,
            started=now,
            deadline_at=datetime.fromtimestamp(now.timestamp() + deadline, UTC),
            masked_argv=masked_argv,
            instance_id=self.instance_id,
        )
        child = _Child(transport, protocol, info, deadline, grace, secrets, time.monotonic())
        self._children[pid] = child
        self.counters.spawned += 1
        self._emit(SupervisorEvent("spawned", purpose, camera_id, pid=pid))
        logger.debug("child %s started: %s (%s)", pid, purpose, camera_id or "-")
        return child

    async def _watch(self, child: _Child) -> str | None:
        """Wait for the child to exit, its deadline or its stdout limit; return the stop reason."""
        if self._closed:
            return "shutdown"  # spawned while close() was already stopping the others
        exited = asyncio.ensure_future(child.protocol.exited.wait())
        limit_hit = asyncio.ensure_future(child.protocol.over_limit.wait())
        remaining = child.deadline - (time.monotonic() - child.started_mono)
        timeout = max(0.0, remaining) if self._enforce_deadlines else None
        try:
            done, _ = await asyncio.wait(
                {exited, limit_hit}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
        finally:
            exited.cancel()
            limit_hit.cancel()
        if exited in done:
            return None
        return "stdout_limit" if limit_hit in done else "deadline"

    async def _finish(self, child: _Child, reason: str | None) -> None:
        """Stop the child if `reason` says so, reap it, end its group, drain pipes, unregister."""
        try:
            if reason is not None:
                await self._request_stop(child, reason)
            else:
                await child.protocol.exited.wait()
                await self._end_group(child, "leftover")
            await self._close_pipes(child)
        finally:
            self._children.pop(child.pid, None)
            self._release_capacity()
        returncode = child.returncode
        self.counters.exited += 1
        self._emit(
            SupervisorEvent(
                "exited", child.info.purpose, child.info.camera_id, child.pid, returncode=returncode
            )
        )
        if child.killed_by:
            logger.debug("child %s reaped after %s stop", child.pid, child.killed_by)

    def _request_stop(self, child: _Child, reason: str) -> asyncio.Task[None]:
        # One stop per child: whoever asks first names the reason, later askers await the same.
        if child.stop_task is None:
            child.stop_task = asyncio.ensure_future(self._stop(child, reason))
        return child.stop_task

    async def _stop(self, child: _Child, reason: str) -> None:
        """SIGTERM the child's group, wait `grace`, SIGKILL the group, reap; then end leftovers."""
        exited = child.protocol.exited
        if not exited.is_set():
            child.killed_by = reason
            self._signal_group(child, signal.SIGTERM, reason)
            try:
                await asyncio.wait_for(exited.wait(), child.grace)
            except TimeoutError:
                self._signal_group(child, signal.SIGKILL, reason)
                await exited.wait()
        await self._end_group(child, reason)

    def _signal_group(self, child: _Child, sig: signal.Signals, reason: str) -> bool:
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return False
        self.counters.killed[(sig.name, reason)] += 1
        self._emit(
            SupervisorEvent(
                "killed",
                child.info.purpose,
                child.info.camera_id,
                child.pid,
                reason=reason,
                signal=sig.name,
            )
        )
        if reason != "shutdown":
            logger.info("child %s: %s (%s)", child.pid, sig.name, reason)
        return True

    async def _end_group(self, child: _Child, reason: str) -> None:
        """End processes left in the child's group after the child itself was reaped.

        The group id stays reserved by the kernel while any member lives, so signalling it after
        the leader is gone reaches only the leftovers (e.g. a grandchild holding stdout open).
        """
        if not group_alive(child.pid):
            return
        logger.warning("child %s: group outlived its leader; ending it", child.pid)
        self._signal_group(child, signal.SIGTERM, reason)
        if await wait_group_gone(child.pid, child.grace):
            return
        self._signal_group(child, signal.SIGKILL, reason)
        if not await wait_group_gone(child.pid, 1.0):
            # Limitation: a member stuck in uninterruptible sleep outlives SIGKILL for a while.
            logger.error("child %s: group still alive after SIGKILL", child.pid)

    async def _close_pipes(self, child: _Child) -> None:
        """Give the pipes a moment to reach EOF, then close the transport either way."""
        if not child.protocol.pipes_closed.is_set():
            try:
                await asyncio.wait_for(child.protocol.pipes_closed.wait(), _DRAIN_TIMEOUT)
            except TimeoutError:
                # Something outside the group (it called setsid) still holds a pipe open.
                logger.warning("child %s: output pipe still open after exit; closing it", child.pid)
        child.transport.close()

    def _result(self, child: _Child) -> ProcessResult:
        ended = datetime.now(UTC)
        returncode = child.returncode
        assert returncode is not None  # _finish reaped it
        return ProcessResult(
            pid=child.pid,
            returncode=returncode,
            stdout=bytes(child.protocol.stdout),
            stderr_tail=_mask(child.protocol.stderr_tail(), child.secrets),
            timed_out=child.killed_by == "deadline",
            killed_by=child.killed_by,
            started=child.info.started,
            ended=ended,
            duration=time.monotonic() - child.started_mono,
        )

    def _emit(self, event: SupervisorEvent) -> None:
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("supervisor event hook %r failed", hook)

    async def watchdog(
        self, interval: float = WATCHDOG_INTERVAL, margin: float = WATCHDOG_MARGIN
    ) -> None:
        """Every `interval` seconds, stop overdue children and reap adopted zombies; never returns.

        Cancellation lets a stop already under way finish (the child is reaped) and re-raises.
        """
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        seen: set[int] = set()
        while True:
            await asyncio.sleep(interval)
            await self.stop_overdue(margin)
            seen = await self._reap_adopted(seen)

    async def stop_overdue(self, margin: float = WATCHDOG_MARGIN) -> list[int]:
        """Stop every child still running `margin` s past its deadline plus grace; return pids.

        Such a child escaped `run`'s own deadline, which is a bug elsewhere: each one is logged
        at ERROR, counted in `counters.watchdog_kills` and stopped the one way with reason
        "watchdog" (its `run` returns with killed_by="watchdog").
        """
        now = time.monotonic()
        overdue = [
            child
            for child in self._children.values()
            if child.stop_task is None
            and not child.protocol.exited.is_set()
            and now - child.started_mono > child.deadline + child.grace + margin
        ]
        for child in overdue:
            self.counters.watchdog_kills += 1
            logger.error(
                "child %s (%s, camera %s): still running %.1fs after its %.1fs deadline; "
                "watchdog stops it",
                child.pid,
                child.info.purpose,
                child.info.camera_id or "-",
                now - child.started_mono - child.deadline,
                child.deadline,
            )
        if overdue:
            stops = [self._request_stop(child, "watchdog") for child in overdue]
            await _await_uninterruptibly(asyncio.gather(*stops))
        return [child.pid for child in overdue]

    async def _reap_adopted(self, seen: set[int]) -> set[int]:
        """Reap zombie children we do not supervise that were already zombies last time.

        They are descendants re-parented to us as a subreaper. One interval of patience leaves
        any other waiter in the process (asyncio's child watcher, subprocess.run in a thread,
        each waiting on its own pid) time to collect its child first. Returns the zombies seen
        now and left for the next pass.
        """
        # Limitation: a child forked by other code in this process and left unwaited for a whole
        # interval (a Popen polled rarely) is reaped here; its poll() then reports returncode 0.
        zombies = set(await asyncio.to_thread(adopted_zombies, set(self._children)))
        for pid in zombies & seen:
            if reap(pid):
                self.counters.adopted_reaped += 1
                logger.debug("reaped adopted process %s", pid)
        return zombies - seen

    async def sweep_orphans(self, current_instance: str | None = None) -> list[int]:
        """End processes marked by another campatrol instance whose owner is dead; return pids.

        A process counts as an orphan when its CAMPATROL_INSTANCE names another instance and the
        owner pid in it is gone or younger than the process (pid reused). Processes without the
        marker are never touched. Each orphan's group is ended like a child's (SIGTERM, grace,
        SIGKILL); orphans are not our children, so init reaps them, not us.
        """
        current = current_instance or self.instance_id
        orphans = await asyncio.to_thread(find_orphans, current)
        for pid in orphans:
            logger.warning("orphan %s of a dead campatrol instance found; ending it", pid)
        await asyncio.gather(*(end_orphan(pid) for pid in orphans))
        return orphans


async def _await_uninterruptibly(awaitable: asyncio.Future[None] | object) -> None:
    """Await `awaitable` to completion even if cancelled meanwhile; then re-raise the cancel."""
    task = asyncio.ensure_future(awaitable)  # type: ignore[arg-type]
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
