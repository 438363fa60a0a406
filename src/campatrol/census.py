"""The census: every capture process and RTSP connection on this host, grouped by camera.

It reads only the process table and the kernel's socket tables (through psutil), so it works
without a running server and sees processes campatrol did not start. Ownership comes from the
environment marker (procgroups): a live owner means "campatrol", a dead one "orphan", none
"foreign". Nothing here ends a process; `campatrol ps --kill-orphans` does that.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import psutil

from campatrol.cameras import Camera, mask_secrets
from campatrol.procgroups import MARKER_VAR, find_orphans, parse_marker

logger = logging.getLogger(__name__)

Owner = Literal["campatrol", "orphan", "foreign"]
OWNERS: Final[tuple[Owner, ...]] = ("campatrol", "orphan", "foreign")

# Programs that read RTSP by themselves. The imageio-ffmpeg binary is named like
# "ffmpeg-linux-x86_64-v7.0.2", hence prefixes rather than exact names.
CAPTURE_PROGRAMS: Final = re.compile(
    r"^(ffmpeg|ffprobe|ffplay|avconv|avprobe|vlc|cvlc|openrtsp|gst-launch)", re.IGNORECASE
)
_RTSP_URL: Final = re.compile(r"rtsp[su]?://[^\s'\"]+", re.IGNORECASE)
_DEFAULT_PORTS: Final = {"rtsp": 554, "rtspu": 554, "rtsps": 322}
# Connections to these remote ports count even when no listed process names the camera: a
# program that keeps its camera URL in a file still shows up this way.
RTSP_PORTS: Final = frozenset({554, 322})
_COUNTED_STATES: Final = frozenset({psutil.CONN_ESTABLISHED, psutil.CONN_SYN_SENT})


@dataclass(frozen=True)
class CensusProcess:
    """One capture process: who started it, against which camera, since when."""

    pid: int
    name: str
    user: str | None
    started: datetime
    age: float
    owner: Owner
    owner_pid: int | None
    instance: str | None
    camera: str | None
    connections: int
    argv: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: times in UTC ISO 8601, argv masked."""
        return {
            "pid": self.pid,
            "name": self.name,
            "user": self.user,
            "started": self.started.isoformat(),
            "age": round(self.age, 1),
            "owner": self.owner,
            "owner_pid": self.owner_pid,
            "instance": self.instance,
            "camera": self.camera,
            "connections": self.connections,
            "argv": list(self.argv),
        }


@dataclass
class CameraCensus:
    """What the host holds against one camera endpoint (host:port)."""

    camera: str
    host: str
    port: int
    camera_id: str | None = None
    connections: int = 0
    processes: list[CensusProcess] = field(default_factory=list)

    @property
    def by_owner(self) -> dict[str, int]:
        """Return the number of processes per owner kind, every kind present."""
        counts = Counter(process.owner for process in self.processes)
        return {owner: counts[owner] for owner in OWNERS}

    @property
    def oldest(self) -> CensusProcess | None:
        """Return the longest-running process against this camera, if any."""
        return min(self.processes, key=lambda p: (p.started, p.pid), default=None)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape of this camera's row."""
        oldest = self.oldest
        return {
            "camera": self.camera,
            "host": self.host,
            "port": self.port,
            "camera_id": self.camera_id,
            "processes": len(self.processes),
            "by_owner": self.by_owner,
            "connections": self.connections,
            "oldest": None if oldest is None else oldest.to_dict(),
            "pids": [process.pid for process in self.processes],
        }


@dataclass(frozen=True)
class Census:
    """The host-wide inventory at one moment; cameras sorted by process and connection count."""

    taken_at: datetime
    cameras: list[CameraCensus]
    processes: list[CensusProcess]

    @property
    def orphans(self) -> list[CensusProcess]:
        """Return the processes whose campatrol owner is dead."""
        return [process for process in self.processes if process.owner == "orphan"]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape served by `campatrol ps --json` and GET /api/system/census."""
        return {
            "taken_at": self.taken_at.isoformat(),
            "cameras": [camera.to_dict() for camera in self.cameras],
            "processes": [process.to_dict() for process in self.processes],
            "totals": {
                "processes": len(self.processes),
                "connections": sum(camera.connections for camera in self.cameras),
                **{owner: sum(p.owner == owner for p in self.processes) for owner in OWNERS},
            },
        }


def endpoint_key(host: str, port: int) -> str:
    """Return the `host:port` a camera is grouped under; IPv6 in brackets, IPv4-mapped as IPv4."""
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host.lower()}:{port}"
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def camera_endpoint(argv: Iterable[str]) -> tuple[str, str, int] | None:
    """Return (key, host, port) of the first rtsp:// URL in `argv`, or None if there is none."""
    for arg in argv:
        for match in _RTSP_URL.finditer(arg):
            try:
                parts = urlsplit(match.group(0))
                port = parts.port or _DEFAULT_PORTS[parts.scheme.lower()]
            except (ValueError, KeyError):
                continue
            if parts.hostname:
                key = endpoint_key(parts.hostname, port)
                return key, key.rpartition(":")[0].strip("[]"), port
    return None


def take_census(cameras: Iterable[Camera] = (), *, now: datetime | None = None) -> Census:
    """Return the census of this host; configured `cameras` get a row even with nothing on it.

    Blocking (it walks /proc): call it in a thread from async code. Credentials of `cameras`
    and the userinfo of every URL are masked in the argv it returns.
    """
    configured = list(cameras)
    secrets = [secret for camera in configured for secret in camera.secrets()]
    now = now or datetime.now(UTC)

    # Orphans first: a process is an orphan for good once its owner is dead, so a process that
    # appears between the two walks can only be misread as "campatrol", never the reverse.
    orphans = set(find_orphans(""))
    connections, per_pid = _tcp_connections()
    processes = _capture_processes(orphans, per_pid, secrets, now)

    rows: dict[str, CameraCensus] = {}
    for camera in configured:
        key = endpoint_key(camera.host, camera.port)
        row = rows.setdefault(key, _row(key, camera.port))
        row.camera_id = row.camera_id or camera.id
    for process in processes:
        if process.camera is not None:
            port = int(process.camera.rpartition(":")[2])
            rows.setdefault(process.camera, _row(process.camera, port)).processes.append(process)
    for (key, port), count in connections.items():
        if key in rows or port in RTSP_PORTS:
            rows.setdefault(key, _row(key, port)).connections = count

    ordered = sorted(
        rows.values(), key=lambda r: (-len(r.processes), -r.connections, r.host, r.port)
    )
    for row in ordered:
        row.processes.sort(key=lambda p: (p.started, p.pid))
    return Census(taken_at=now, cameras=ordered, processes=processes)


def _row(key: str, port: int) -> CameraCensus:
    return CameraCensus(camera=key, host=key.rpartition(":")[0].strip("[]"), port=port)


def _tcp_connections() -> tuple[Counter[tuple[str, int]], Counter[int]]:
    """Count open or opening TCP connections by remote endpoint, and by pid where known."""
    by_endpoint: Counter[tuple[str, int]] = Counter()
    by_pid: Counter[int] = Counter()
    # Limitation: on macOS this needs root; on Linux /proc/net/tcp is readable by everyone, but
    # the pid of another user's socket is not (it is counted for its camera, not its process).
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status in _COUNTED_STATES and conn.raddr:
            by_endpoint[(endpoint_key(conn.raddr.ip, conn.raddr.port), conn.raddr.port)] += 1
            if conn.pid:
                by_pid[conn.pid] += 1
    return by_endpoint, by_pid


def _capture_processes(
    orphans: set[int],
    per_pid: Counter[int],
    secrets: list[str],
    now: datetime,
) -> list[CensusProcess]:
    found = []
    attrs = ["pid", "name", "cmdline", "create_time", "username", "status"]
    for proc in psutil.process_iter(attrs):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["pid"] == os.getpid():
            continue
        argv = info["cmdline"] or []
        marker = _marker(proc)
        endpoint = camera_endpoint(argv)
        if marker is None and endpoint is None and not _is_capture_program(info["name"], argv):
            continue
        started = datetime.fromtimestamp(info["create_time"], UTC)
        owner: Owner = "foreign"
        if marker is not None:
            owner = "orphan" if info["pid"] in orphans else "campatrol"
        found.append(
            CensusProcess(
                pid=info["pid"],
                name=info["name"] or "",
                user=info["username"],
                started=started,
                age=max(0.0, (now - started).total_seconds()),
                owner=owner,
                owner_pid=marker[1] if marker else None,
                instance=marker[0] if marker else None,
                camera=endpoint[0] if endpoint else None,
                connections=per_pid[info["pid"]],
                argv=tuple(mask_secrets(arg, secrets) for arg in argv),
            )
        )
    return sorted(found, key=lambda p: (p.started, p.pid))


def _marker(proc: psutil.Process) -> tuple[str, int] | None:
    try:
        value = proc.environ().get(MARKER_VAR)
    except (psutil.Error, OSError):
        return None  # another user's process: its environment is not ours to read
    return parse_marker(value) if value else None


def _is_capture_program(name: str | None, argv: list[str]) -> bool:
    names = [name or ""]
    if argv:
        names.append(os.path.basename(argv[0]))
    return any(CAPTURE_PROGRAMS.match(candidate) for candidate in names)
