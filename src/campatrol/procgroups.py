"""Process groups, parent-death signal and instance marker: group checks, orphans of dead owners.

Marker format: every child of a campatrol instance carries `CAMPATROL_INSTANCE=<instance>:<pid>`
in its environment, where `<instance>` is the owning supervisor's instance id (uuid4 hex) and
`<pid>` the pid of the process that owns that supervisor. A process whose marker names another
instance, and whose owner pid is gone (or now belongs to a process younger than it), is an orphan.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Final

import psutil

logger = logging.getLogger(__name__)

MARKER_VAR: Final = "CAMPATROL_INSTANCE"
_POLL: Final = 0.02  # seconds between looks at a group we cannot wait() for
_PR_SET_PDEATHSIG: Final = 1
_PR_SET_CHILD_SUBREAPER: Final = 36


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent so the forked child only makes the call (see make_preexec).
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def make_preexec(expected_parent: int) -> Callable[[], None] | None:
    """Return the function the forked child runs before exec: parent-death signal, race check.

    preexec_fn is documented as unsafe when the parent has threads (asyncio's child watcher and
    to_thread workers exist): the child runs Python between fork and exec and could block on a
    lock another thread held at fork time. This one imports nothing, logs nothing and only calls
    a prctl resolved beforehand; glibc resets its malloc locks in the child. A wrapper binary
    (e.g. `setpriv --pdeathsig`) would avoid it but is not installed everywhere and cannot do the
    getppid check below.
    """
    if _prctl is None:
        return None  # Limitation: no parent-death signal outside Linux; sweep_orphans covers it
    prctl = _prctl
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        # The parent may have died between fork and prctl; the signal would then never come.
        if os.getppid() != expected_parent:
            os._exit(255)

    return preexec


def become_subreaper(enable: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); return whether it is.

    A grandchild that left its group (setsid) and outlives its parent is then re-parented to
    campatrol instead of init, so it shows in our process table and is reaped by us
    (`reap_adopted`) rather than depending on an init that may not reap (some containers).
    """
    if _prctl is None:
        return False  # Limitation: outside Linux, orphaned grandchildren go to init
    if _prctl(_PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        logger.warning("cannot become a child subreaper: %s", os.strerror(errno))
        return False
    return enable


def adopted_zombies(registered: set[int]) -> list[int]:
    """Return pids of our zombie children that are not in `registered` (supervised children)."""
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.pid not in registered and child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return zombies


def reap(pid: int) -> bool:
    """Collect the exit status of our zombie child `pid` without blocking; return whether done."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # someone else collected it first
    return reaped == pid


def make_marker(instance_id: str, owner_pid: int | None = None) -> str:
    """Return the CAMPATROL_INSTANCE value for children of this instance: `<uuid>:<owner pid>`."""
    return f"{instance_id}:{owner_pid if owner_pid is not None else os.getpid()}"


def parse_marker(value: str) -> tuple[str, int] | None:
    """Split a CAMPATROL_INSTANCE value into (instance id, owner pid), or None if malformed."""
    instance, sep, pid = value.rpartition(":")
    if not sep or not instance or not pid.isdigit():
        return None
    return instance, int(pid)


def group_alive(pgid: int) -> bool:
    """Return whether any process of group `pgid` is still running (zombies do not count)."""
    _reap_group_zombies(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill() also reaches zombies, which linger where init is slow to reap (some containers).
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _reap_group_zombies(pgid: int) -> None:
    # When campatrol is a child subreaper, leftovers of a group are re-parented to us and would
    # stay zombies (still group members) unless reaped here. The group's leader has already been
    # reaped by asyncio when this runs, so nothing asyncio waits for is taken from it.
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


async def wait_group_gone(pgid: int, within: float) -> bool:
    """Poll until group `pgid` has no running member; return False if `within` seconds pass."""
    end = time.monotonic() + within
    # Grandchildren and orphans cannot be wait()ed for: polling is the only way to see them go.
    while group_alive(pgid):
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(_POLL)
    return True


def find_orphans(current_instance: str) -> list[int]:
    """Return pids of processes marked by another instance whose owner process is gone.

    Processes of other users (environment unreadable) and processes without the marker are
    never listed.
    """
    orphans = []
    for proc in psutil.process_iter(["create_time", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            marker = proc.environ().get(MARKER_VAR)
        except (psutil.Error, OSError):
            continue
        parsed = parse_marker(marker) if marker else None
        if parsed is None or parsed[0] == current_instance:
            continue
        if not _owner_alive(parsed[1], proc.info["create_time"]):
            orphans.append(proc.pid)
    return orphans


def _owner_alive(owner_pid: int, child_created: float) -> bool:
    try:
        owner = psutil.Process(owner_pid)
        if owner.status() == psutil.STATUS_ZOMBIE:
            return False
        # A live owner is older than its children; a younger one holds a reused pid.
        return owner.create_time() <= child_created + 0.5
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: leave it alone


async def end_orphan(pid: int, grace: float = 2.0) -> None:
    """End an orphan like a child: SIGTERM, `grace`, SIGKILL; its group too if it leads one.

    Only a group leader is signalled as a group, so unmarked processes that happen to share the
    group of a non-leader are never hit. Orphans are not our children: init reaps them.
    """
    try:
        is_leader = os.getpgid(pid) == pid
    except ProcessLookupError:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if is_leader:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        if await _wait_orphan_gone(pid, is_leader, grace):
            return
    logger.error("orphan %s still alive after SIGKILL", pid)


async def _wait_orphan_gone(pid: int, is_leader: bool, within: float) -> bool:
    if is_leader:
        return await wait_group_gone(pid, within)
    end = time.monotonic() + within
    while _running(pid):
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(_POLL)
    return True


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
