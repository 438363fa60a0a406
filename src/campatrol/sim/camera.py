"""One simulated camera: its listening socket, sessions, counters, fault and scene."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from campatrol.sim.auth import Authenticator
from campatrol.sim.clips import Clip, ClipCache, ClipSpec
from campatrol.sim.config import SimCameraConfig, check_fault

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """One RTSP session: the slot it holds and the RTP state of its stream."""

    id: str
    stream: str
    channel: int
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    first_seq: int = field(default_factory=lambda: secrets.randbits(16))
    first_rtptime: int = field(default_factory=lambda: secrets.randbits(32))
    last_seen: float = 0.0
    torn_down: bool = False
    streaming: bool = False


@dataclass
class Counters:
    """What the oracle reports about a camera besides its current sessions."""

    peak_sessions: int = 0
    total_sessions: int = 0
    refused: int = 0
    connections: int = 0
    auth_failures: int = 0


class SimCamera:
    """A simulated camera; built and owned by a Simulator.

    An idle camera is only a listening socket served by the event loop: no task, no timer.
    """

    def __init__(self, config: SimCameraConfig, clips: ClipCache) -> None:
        self.config = config
        self.id = config.id
        self.port = config.port
        self.scene = config.scene
        self.fault, self.fault_params = check_fault(config.fault, config.fault_params)
        self.auth = Authenticator(config.auth, config.username, config.password)
        self.counters = Counters()
        self._clips = clips
        self._server: asyncio.Server | None = None
        self._sessions: dict[str, Session] = {}
        self._held_until: list[float] = []
        self._failures = 0
        self._locked_until = 0.0
        self._connections: set[asyncio.Task[Any]] = set()
        self._chores: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"<SimCamera {self.id} {self.config.host}:{self.port}>"

    # Listening -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen (unless the camera starts with the refuse fault)."""
        if self.fault != "refuse":
            await self._listen()

    async def _listen(self) -> None:
        from campatrol.sim.rtsp import RtspConnection

        sock = self._bind()
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(
            lambda reader, writer: RtspConnection(self, reader, writer).serve(), sock=sock
        )

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # SO_REUSEADDR: a restarted simulator rebinds at once despite TIME_WAIT connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.config.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            where = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            raise OSError(
                exc.errno,
                f"camera {self.config.id}: cannot listen on {where}:{self.port}: {exc.strerror}",
            ) from exc
        return sock

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def track_connection(self, task: asyncio.Task[Any]) -> None:
        """Register a connection's task so that closing the camera can end it."""
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def close(self) -> None:
        """Stop listening and end every connection and background chore of this camera."""
        self._stop_listening()
        pending = [*self._connections, *self._chores]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _run_chore(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # Runtime control -------------------------------------------------------------------------

    def set_fault(self, fault: str, **params: Any) -> None:
        """Switch the camera's fault (\"none\" clears it); ValueError for a bad name or param."""
        name, checked = check_fault(fault, params)
        previous = self.fault
        self.fault, self.fault_params = name, checked
        self._failures, self._locked_until = 0, 0.0
        if name == "refuse" and previous != "refuse":
            self._stop_listening()
        elif previous == "refuse" and name != "refuse":
            self._run_chore(self._listen())
        logger.info("sim camera %s: fault %s %s", self.id, name, checked or "")

    async def wait_listening(self) -> None:
        """Wait until a pending re-listen (after clearing `refuse`) has finished."""
        await asyncio.gather(*self._chores, return_exceptions=True)

    def set_scene(self, scene: int) -> None:
        """Change the scene; new sessions show it at once, running ones at their next keyframe.

        The clip is encoded in the background; a new session waits for it.
        """
        self.scene = int(scene)
        for stream in self.config.paths:
            self._clips.prefetch(self.clip_spec(stream))

    def clip_spec(self, stream: str, scene: int | None = None) -> ClipSpec:
        """Return the clip spec a stream of this camera shows in a scene (default: current)."""
        width, height = self.config.stream_size(stream)
        return ClipSpec(
            width,
            height,
            self.config.fps,
            self.config.gop,
            self.scene if scene is None else scene,
            self.config.label,
        )

    async def clip(self, stream: str) -> Clip:
        """Return the clip of a stream in the current scene, encoding it if needed."""
        return await self._clips.get(self.clip_spec(stream))

    def ready_clip(self, stream: str) -> Clip | None:
        """Return the current scene's clip if loaded, else start loading it and return None."""
        spec = self.clip_spec(stream)
        clip = self._clips.ready(spec)
        if clip is None:
            self._clips.prefetch(spec)
        return clip

    # Sessions and the oracle ---------------------------------------------------------------

    def session_count(self) -> int:
        """Return the sessions the camera holds, counting slots kept for dropped clients."""
        now = asyncio.get_running_loop().time()
        self._held_until = [until for until in self._held_until if until > now]
        return len(self._sessions) + len(self._held_until)

    def is_full(self) -> bool:
        """Whether every slot is taken."""
        return self.session_count() >= self.config.max_sessions

    def open_session(self, stream: str, channel: int) -> Session:
        """Create a session in a free slot and count it."""
        session = Session(secrets.token_hex(8), stream, channel)
        session.last_seen = asyncio.get_running_loop().time()
        self._sessions[session.id] = session
        self.counters.total_sessions += 1
        self.counters.peak_sessions = max(self.counters.peak_sessions, self.session_count())
        return session

    def get_session(self, session_id: str | None) -> Session | None:
        """Return a live session by id."""
        return self._sessions.get(session_id or "")

    def close_session(self, session: Session, *, dropped: bool) -> None:
        """Free a session's slot; a dropped one (no TEARDOWN) keeps it for hold_after_drop."""
        if self._sessions.pop(session.id, None) is None:
            return
        if dropped and self.config.hold_after_drop > 0:
            now = asyncio.get_running_loop().time()
            self._held_until.append(now + self.config.hold_after_drop)

    def count_refused(self) -> None:
        """Count a connection turned away because the camera was full."""
        self.counters.refused += 1
        logger.debug("sim camera %s: refused a client, %d sessions", self.id, self.session_count())

    # Authentication --------------------------------------------------------------------------

    def locked_out(self) -> bool:
        """Whether the lockout fault currently rejects every login."""
        return asyncio.get_running_loop().time() < self._locked_until

    def record_auth_failure(self) -> None:
        """Count a failed login; with the lockout fault, K failures lock out for L seconds."""
        self.counters.auth_failures += 1
        self._failures += 1
        if self.fault == "lockout" and self._failures >= self.fault_params["after_failures"]:
            self._failures = 0
            self._locked_until = asyncio.get_running_loop().time() + self.fault_params["seconds"]
            logger.info(
                "sim camera %s: locked out for %.0fs", self.id, self.fault_params["seconds"]
            )

    def record_auth_success(self) -> None:
        """Reset the consecutive failure count after a good login."""
        self._failures = 0

    # Reporting -------------------------------------------------------------------------------

    def url(self, stream: str = "main") -> str:
        """Return the stream's rtsp:// URL with percent-encoded credentials."""
        return self.config.url(stream, port=self.port)

    def masked_url(self, stream: str = "main") -> str:
        """Return the stream's rtsp:// URL with credentials replaced by ***."""
        return self.config.url(stream, port=self.port, masked=True)

    def stats(self) -> dict[str, Any]:
        """Return the oracle's view of this camera (credentials only inside `url`)."""
        return {
            "id": self.id,
            "name": self.config.display_name,
            "url": self.url(),
            "urls": {stream: self.url(stream) for stream in self.config.paths},
            "host": self.config.host,
            "port": self.port,
            "sessions": self.session_count(),
            "peak_sessions": self.counters.peak_sessions,
            "total_sessions": self.counters.total_sessions,
            "refused": self.counters.refused,
            "connections": self.counters.connections,
            "open_connections": len(self._connections),
            "streaming": sum(1 for session in self._sessions.values() if session.streaming),
            "auth_failures": self.counters.auth_failures,
            "max_sessions": self.config.max_sessions,
            "fault": self.fault,
            "fault_params": dict(self.fault_params),
            "scene": self.scene,
            "listening": self._server is not None,
        }

    def reset_counters(self) -> None:
        """Zero the counters; the peak restarts from the sessions held now."""
        self.counters = Counters(peak_sessions=self.session_count())
