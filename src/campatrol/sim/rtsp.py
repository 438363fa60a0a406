"""The RTSP 1.0 server side of one client connection to a simulated camera (RFC 2326)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from campatrol.sim.auth import has_credentials
from campatrol.sim.stream import stream_session

if TYPE_CHECKING:
    from campatrol.sim.camera import Session, SimCamera

logger = logging.getLogger(__name__)

SERVER: Final = "campatrol-sim"
PUBLIC: Final = "OPTIONS, DESCRIBE, SETUP, PLAY, PAUSE, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
MAX_HEADER: Final = 16 * 1024
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    501: "Not Implemented",
}
_HANG_FAULTS: Final = {
    "OPTIONS": "hang_options",
    "DESCRIBE": "hang_describe",
    "SETUP": "hang_setup",
    "PLAY": "hang_play",
}
_INTERLEAVED = re.compile(r"interleaved=(\d+)(?:-(\d+))?")


class _Hang(Exception):
    """Stop answering this client for good, but keep its connection open."""


class _Abort(Exception):
    """Reset this client's connection at once."""


@dataclass
class Request:
    """A parsed RTSP request."""

    method: str
    uri: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """Return a header's value by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass
class Response:
    """An RTSP response to be serialized with the request's CSeq."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def request_target(uri: str) -> str:
    """Return the path and query of an rtsp:// request URI (the whole URI if it has no host)."""
    if "://" not in uri:
        return uri
    rest = uri.split("://", 1)[1]
    slash = rest.find("/")
    return rest[slash:] if slash != -1 else "/"


class RtspConnection:
    """Serves one client connection: requests, authentication, faults and the stream."""

    def __init__(
        self, camera: SimCamera, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.camera = camera
        self.reader = reader
        self.writer = writer
        self.session: Session | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._refused_counted = False

    async def serve(self) -> None:
        """Serve the client until it leaves, the camera closes, or a fault ends it."""
        task = asyncio.current_task()
        if task is not None:
            self.camera.track_connection(task)
        self.camera.counters.connections += 1
        try:
            await self._serve_requests()
        except _Hang:
            await self._discard_until_eof()
        except _Abort:
            self._reset()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            await self._finish()

    async def _serve_requests(self) -> None:
        fault = self.camera.fault
        if fault == "reset":
            raise _Abort
        if fault == "hang_after_accept":
            raise _Hang
        if self.camera.is_full() and self.camera.config.over_limit != "453":
            self._refuse()
        while True:
            request = await self._read_request()
            if request is None:
                return
            if self.camera.fault == "garbage":
                self._send_garbage()
                return
            if self.camera.fault == _HANG_FAULTS.get(request.method):
                raise _Hang
            response = await self._dispatch(request)
            self._send(request, response)
            if request.method == "PLAY" and response.status == 200:
                self._start_stream()

    # Reading ---------------------------------------------------------------------------------

    async def _read_request(self) -> Request | None:
        """Return the next request, consuming interleaved RTCP; None when the client left."""
        while True:
            try:
                first = await self.reader.readexactly(1)
            except asyncio.IncompleteReadError:
                return None
            self._touch()
            if first == b"$":
                header = await self.reader.readexactly(3)
                (length,) = struct.unpack("!H", header[1:])
                await self.reader.readexactly(length)
                continue
            if first in b"\r\n":
                continue
            head = first + await self.reader.readuntil(b"\r\n\r\n")
            request = self._parse(head)
            length = int(request.header("content-length") or 0)
            if length:
                request.body = await self.reader.readexactly(min(length, MAX_HEADER))
            return request

    @staticmethod
    def _parse(head: bytes) -> Request:
        lines = head.decode("utf-8", "replace").split("\r\n")
        parts = lines[0].split(" ")
        method, uri = (parts[0], parts[1]) if len(parts) >= 3 else ("", "")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Request(method.upper(), uri, headers)

    def _touch(self) -> None:
        if self.session is not None:
            self.session.last_seen = asyncio.get_running_loop().time()

    async def _discard_until_eof(self) -> None:
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    # Dispatch --------------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(200, {"Public": PUBLIC})
        if request.method not in ("DESCRIBE", "SETUP", "PLAY", "PAUSE", "TEARDOWN") and (
            request.method not in ("GET_PARAMETER", "SET_PARAMETER")
        ):
            return Response(501)
        denied = self._authorize(request)
        if denied is not None:
            return denied
        handler = {
            "DESCRIBE": self._describe,
            "SETUP": self._setup,
            "PLAY": self._play,
            "PAUSE": self._pause,
            "TEARDOWN": self._teardown,
        }.get(request.method)
        if handler is None:  # GET_PARAMETER / SET_PARAMETER: keep-alive
            return Response(200)
        return await handler(request)

    def _authorize(self, request: Request) -> Response | None:
        camera = self.camera
        authorization = request.header("authorization")
        unauthorized = Response(401, {"WWW-Authenticate": camera.auth.challenge()})
        if camera.fault == "reject_auth" or camera.locked_out():
            if has_credentials(authorization):
                camera.record_auth_failure()
            return unauthorized
        if camera.auth.check(request.method, authorization):
            camera.record_auth_success()
            return None
        if has_credentials(authorization):
            camera.record_auth_failure()
        return unauthorized

    def _stream_for(self, request: Request, *, setup: bool) -> str | None:
        target = request_target(request.uri)
        for stream, path in self.camera.config.paths.items():
            if target == path:
                return stream
            if setup and target in (f"{path}/trackID=0", f"{path}trackID=0"):
                return stream
        return None

    async def _describe(self, request: Request) -> Response:
        stream = self._stream_for(request, setup=False)
        if stream is None:
            return Response(404)
        over = self._check_limit()
        if over is not None:
            return over
        clip = await self.camera.clip(stream)
        sdp = self._sdp(clip.profile_level_id, clip.sprop_parameter_sets)
        return Response(
            200,
            {"Content-Base": request.uri + "/", "Content-Type": "application/sdp"},
            sdp.encode("utf-8"),
        )

    def _sdp(self, profile: str, sprop: str) -> str:
        config = self.camera.config
        family = "IP6" if ":" in config.host else "IP4"
        return (
            "v=0\r\n"
            f"o=- {random.getrandbits(31)} 1 IN {family} {config.host}\r\n"
            f"s={config.display_name}\r\n"
            f"c=IN {family} {'::' if family == 'IP6' else '0.0.0.0'}\r\n"
            "t=0 0\r\n"
            "a=control:*\r\n"
            "a=range:npt=0-\r\n"
            "m=video 0 RTP/AVP 96\r\n"
            "a=rtpmap:96 H264/90000\r\n"
            f"a=fmtp:96 packetization-mode=1;profile-level-id={profile};"
            f"sprop-parameter-sets={sprop}\r\n"
            f"a=framerate:{config.fps}\r\n"
            "a=control:trackID=0\r\n"
        )

    def _check_limit(self) -> Response | None:
        """Turn the client away when the camera is full and it holds no session here."""
        if self.session is not None or not self.camera.is_full():
            return None
        self._refuse()
        return Response(453)

    def _refuse(self) -> None:
        if not self._refused_counted:
            self._refused_counted = True
            self.camera.count_refused()
        mode = self.camera.config.over_limit
        if mode == "reset":
            raise _Abort
        if mode == "silence":
            raise _Hang

    async def _setup(self, request: Request) -> Response:
        stream = self._stream_for(request, setup=True)
        if stream is None:
            return Response(404)
        transport = request.header("transport") or ""
        if "TCP" not in transport.upper():
            # Limitation: RTP over UDP is not served; clients fall back to TCP on 461.
            return Response(461)
        if self.session is not None:
            if self.session.stream != stream:
                return Response(459)
        else:
            over = self._check_limit()
            if over is not None:
                return over
            match = _INTERLEAVED.search(transport)
            channel = int(match.group(1)) if match else 0
            self.session = self.camera.open_session(stream, channel)
            self._arm_session_timeout()
        session = self.session
        reply_transport = (
            f"RTP/AVP/TCP;unicast;interleaved={session.channel}-{session.channel + 1};"
            f'ssrc={session.ssrc:08X};mode="PLAY"'
        )
        return Response(200, {"Transport": reply_transport, **self._session_header()})

    def _session_header(self) -> dict[str, str]:
        assert self.session is not None
        timeout = round(self.camera.config.session_timeout)
        return {"Session": f"{self.session.id};timeout={timeout}"}

    def _owned_session(self, request: Request) -> Session | None:
        session_id = (request.header("session") or "").split(";")[0].strip()
        if self.session is None or session_id != self.session.id:
            return None
        return self.session

    async def _play(self, request: Request) -> Response:
        session = self._owned_session(request)
        if session is None:
            return Response(454)
        await self.camera.clip(session.stream)
        rtp_info = f"url={request.uri};seq={session.first_seq};rtptime={session.first_rtptime}"
        return Response(
            200, {"Range": "npt=0.000-", "RTP-Info": rtp_info, **self._session_header()}
        )

    async def _pause(self, request: Request) -> Response:
        if self._owned_session(request) is None:
            return Response(454)
        await self._stop_stream()
        return Response(200, self._session_header())

    async def _teardown(self, request: Request) -> Response:
        session = self._owned_session(request)
        if session is None:
            return Response(454)
        await self._stop_stream()
        session.torn_down = True
        self.camera.close_session(session, dropped=False)
        self.session = None
        return Response(200)

    # Writing ---------------------------------------------------------------------------------

    def _send(self, request: Request, response: Response) -> None:
        lines = [f"RTSP/1.0 {response.status} {REASONS.get(response.status, 'Error')}"]
        lines.append(f"CSeq: {request.header('cseq') or '0'}")
        lines.append(f"Server: {SERVER}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        if response.body:
            lines.append(f"Content-Length: {len(response.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
        self.writer.write(head + response.body)

    def _send_garbage(self) -> None:
        # Deterministic noise, so a failing test sees the same bytes every run.
        self.writer.write(random.Random(self.camera.id).randbytes(512))

    def _reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    # Streaming and session lifetime ----------------------------------------------------------

    def _start_stream(self) -> None:
        if self._stream_task is None and self.session is not None:
            self._stream_task = asyncio.get_running_loop().create_task(
                stream_session(self.camera, self.session, self.writer.transport)
            )

    async def _stop_stream(self) -> None:
        task, self._stream_task = self._stream_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _arm_session_timeout(self) -> None:
        loop = asyncio.get_running_loop()
        session = self.session
        if session is None:
            return
        deadline = session.last_seen + self.camera.config.session_timeout
        if loop.time() < deadline:
            loop.call_at(deadline, self._arm_session_timeout_if_current, session)
            return
        logger.info("sim camera %s: session %s timed out", self.camera.id, session.id)
        self.camera.close_session(session, dropped=False)
        self.session = None
        self.writer.transport.abort()

    def _arm_session_timeout_if_current(self, session: Session) -> None:
        if self.session is session:
            self._arm_session_timeout()

    async def _finish(self) -> None:
        """Release everything this connection holds; safe under a second cancellation."""
        await asyncio.shield(self._stop_stream())
        if self.session is not None:
            self.camera.close_session(self.session, dropped=not self.session.torn_down)
            self.session = None
        transport = self.writer.transport
        if transport.get_write_buffer_size():
            # A client that stopped reading would keep a flushing close() open forever.
            transport.abort()
        else:
            transport.close()
