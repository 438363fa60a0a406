"""The ffmpeg driver: one keyframe from a camera's RTSP stream as a JPEG, through the supervisor."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Final, Protocol

from campatrol.capture.result import Snapshot, validate_jpeg
from campatrol.errors import (
    CaptureBusy,
    CaptureConfigError,
    CaptureError,
    CaptureNotFound,
    CaptureProtocolError,
    CaptureRefused,
    CaptureTimeout,
    CaptureUnauthorized,
    CaptureUnreachable,
    InvalidImage,
    SupervisorClosed,
    SupervisorError,
)

if TYPE_CHECKING:
    from campatrol.ffmpeg import FfmpegInfo
    from campatrol.supervisor import ProcessResult, Supervisor

logger = logging.getLogger(__name__)

PURPOSE: Final = "capture"
STDOUT_LIMIT: Final = 32 * 1024 * 1024  # one JPEG of a 4K frame is a few MB; anything more is junk
# Skipped (non-key) frames do not count towards stream probing, so the default 5 s
# analyzeduration would be spent in full on every capture; the SDP already names the codec.
ANALYZE_DURATION_US: Final = 500_000


class CameraLike(Protocol):
    """What the driver needs of a camera (campatrol.cameras.Camera satisfies it)."""

    @property
    def id(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def deadline(self) -> float: ...
    def rtsp_url(self) -> str: ...
    def secrets(self) -> tuple[str, ...]: ...


# stderr pattern -> failure class, first match wins. Wording as printed by ffmpeg 5.1 (Debian)
# and 9.0 (imageio-ffmpeg) at -loglevel warning, each provoked against the simulator or a
# closed loopback port unless the comment says otherwise. Option errors come first: they are
# ours, not the camera's.
STDERR_PATTERNS: Final[tuple[tuple[re.Pattern[str], type[CaptureError]], ...]] = tuple(
    (re.compile(pattern), cls)
    for pattern, cls in (
        # both: "Unrecognized option 'stimeout'." then "Error splitting the argument list: ..."
        (r"Unrecognized option|Error splitting the argument list", CaptureConfigError),
        # both: "Missing argument for option 'frames:v'."; 5.1: "Unable to parse option value
        # \"bogus\"" and "Error setting option rtsp_transport to value bogus."
        (
            r"Missing argument for option|Unable to parse option|Error setting option"
            r"|Option \S+ not found",
            CaptureConfigError,
        ),
        # 5.1: "method DESCRIBE failed: 401 Unauthorized"; 9.0: "failed: 401 (Unauthorized)";
        # both: "Server returned 401 Unauthorized (authorization failed)". 403 not provoked.
        (r"(?:failed:|returned) 40[13]\b|Unauthorized|Forbidden", CaptureUnauthorized),
        # 5.1: "failed: 453 Not Enough Bandwidth"; 9.0: "failed: 453 (Not Enough Bandwidth)";
        # then both: "Server returned 4XX Client Error, but not one of 40{0,1,3,4}".
        # 503 not provoked.
        (
            r"(?:failed:|returned) (?:453|503)\b|Not Enough Bandwidth|Service Unavailable",
            CaptureBusy,
        ),
        # 5.1: "failed: 404 Not Found"; 9.0: "failed: 404 (Not Found)"
        (r"(?:failed:|returned) 404\b", CaptureNotFound),
        # both: "Connection to tcp://... failed: Connection refused"; 9.0 only, for a reset:
        # "Failed reading RTSP data: Connection reset by peer" (5.1 says only "Invalid data").
        (r"Connection refused|Connection reset by peer|Broken pipe", CaptureRefused),
        # Not provoked (that needs a non-loopback target or DNS): strerror/gai_strerror texts.
        (
            r"No route to host|Network is unreachable|Host is unreachable"
            r"|Name or service not known|Temporary failure in name resolution",
            CaptureUnreachable,
        ),
        # 9.0 only: "Failed reading RTSP data: Connection timed out" (socket timeout fired)
        (r"timed out", CaptureTimeout),
        # both: "Invalid data found when processing input" (garbage, and 5.1's reset/timeout)
        (r"Invalid data found|Error while decoding|non-existing PPS", CaptureProtocolError),
    )
)
# When ffmpeg's own socket timeout fires, 5.1 reports it as "Invalid data found when processing
# input" (silence before the reply) or "Operation not permitted" (silence after PLAY): a run that
# lasted at least that timeout and ended with one of these was a timeout.
_TIMEOUT_DISGUISES: Final = (CaptureProtocolError,)

_PHRASES: Final = {
    CaptureConfigError: "ffmpeg rejected its options",
    CaptureUnauthorized: "credentials rejected",
    CaptureBusy: "camera at its session limit",
    CaptureNotFound: "stream path not found",
    CaptureRefused: "connection refused or reset",
    CaptureUnreachable: "host unreachable",
    CaptureTimeout: "timed out",
    CaptureProtocolError: "protocol error",
}


def socket_timeout(deadline: float) -> float:
    """Return the RTSP socket timeout (s) for a capture deadline: a little below it."""
    return max(0.5, deadline * 0.8)


def build_argv(camera: CameraLike, ffmpeg: FfmpegInfo, deadline: float) -> list[str]:
    """Return the ffmpeg argv that writes one keyframe of the camera's stream as JPEG to stdout.

    The socket timeout sits a little below the deadline so that a silent camera usually ends
    ffmpeg from the inside; the supervisor's deadline is the guarantee.
    """
    return [
        ffmpeg.path,
        "-hide_banner",
        "-nostdin",
        # warning, not error: 9.x prints the cause ("reset by peer", "timed out") only there.
        "-loglevel",
        "warning",
        "-rtsp_transport",
        camera.transport,
        ffmpeg.rtsp_timeout_option,
        str(int(socket_timeout(deadline) * 1_000_000)),
        "-allowed_media_types",
        "video",
        "-analyzeduration",
        str(ANALYZE_DURATION_US),
        # Decode keyframes only: no grey or smeared frame from a stream joined mid-GOP.
        "-skip_frame",
        "nokey",
        "-i",
        # Limitation: ffmpeg reads the URL only from its argv, so the OS process list shows
        # the percent-encoded password while a capture runs (campatrol's own listings mask it).
        camera.rtsp_url(),
        "-an",
        "-frames:v",
        "1",
        "-f",
        "image2pipe",
        "-c:v",
        "mjpeg",
        "-q:v",
        "3",
        "-",
    ]


async def capture_ffmpeg(
    camera: CameraLike,
    supervisor: Supervisor,
    ffmpeg: FfmpegInfo,
    *,
    deadline: float | None = None,
    purpose: str = PURPOSE,
    grace: float = 2.0,
) -> Snapshot:
    """Take one keyframe from `camera` with an ffmpeg child and return it as a Snapshot.

    `deadline` (default: the camera's) bounds the whole capture; the supervisor enforces it.
    `purpose` labels the child in the supervisor's registry (e.g. "capture", "snap"); `grace`
    is the time between SIGTERM and SIGKILL when the child must be stopped.
    Raises a CaptureError leaf whose failure_class says why; SupervisorClosed when the
    supervisor shut down meanwhile. Cancellation kills and reaps the ffmpeg child first.
    The caller holds the camera's slot lease around this call.
    """
    limit = camera.deadline if deadline is None else deadline
    if limit <= 0:
        raise ValueError(f"camera {camera.id}: deadline must be positive, got {limit}")
    argv = build_argv(camera, ffmpeg, limit)
    try:
        result = await supervisor.run(
            argv,
            deadline=limit,
            purpose=purpose,
            camera_id=camera.id,
            secrets=camera.secrets(),
            stdout_limit=STDOUT_LIMIT,
            grace=grace,
        )
    except SupervisorClosed:
        raise
    except SupervisorError as exc:
        raise CaptureConfigError(f"camera {camera.id}: {exc}") from exc

    if result.killed_by == "shutdown":
        raise SupervisorClosed(f"camera {camera.id}: capture stopped by shutdown")
    if result.killed_by == "deadline":
        raise CaptureTimeout(
            f"camera {camera.id}: no frame within {limit:.1f}s", stderr_tail=result.stderr_tail
        )
    if result.killed_by == "stdout_limit":
        raise InvalidImage(
            f"camera {camera.id}: ffmpeg wrote more than {STDOUT_LIMIT} bytes",
            stderr_tail=result.stderr_tail,
        )
    if result.returncode != 0:
        raise classify_failure(camera.id, result, socket_timeout(limit))

    try:
        width, height = await asyncio.to_thread(validate_jpeg, result.stdout)
    except InvalidImage as exc:
        raise InvalidImage(f"camera {camera.id}: {exc}", stderr_tail=result.stderr_tail) from None
    return Snapshot(
        jpeg=result.stdout,
        width=width,
        height=height,
        taken_at=result.ended,
        duration=result.duration,
        driver="ffmpeg",
    )


def classify_failure(
    camera_id: str, result: ProcessResult, socket_timeout_s: float
) -> CaptureError:
    """Map a failed ffmpeg run (non-zero exit) to the CaptureError leaf its stderr points to."""
    tail = result.stderr_tail
    cls = classify_stderr(tail)
    if cls in _TIMEOUT_DISGUISES and result.duration >= socket_timeout_s:
        return CaptureTimeout(
            f"camera {camera_id}: timed out (no data for {socket_timeout_s:.1f}s)",
            stderr_tail=tail,
        )
    detail = _last_line(tail)
    phrase = _PHRASES.get(cls, "ffmpeg failed")
    message = f"camera {camera_id}: {phrase} (ffmpeg exit {result.returncode})"
    if detail:
        message += f": {detail}"
    return cls(message, stderr_tail=tail)


def classify_stderr(stderr_tail: str) -> type[CaptureError]:
    """Return the failure class ffmpeg's stderr names; protocol error when nothing matches."""
    for pattern, cls in STDERR_PATTERNS:
        if pattern.search(stderr_tail):
            return cls
    return CaptureProtocolError


def _last_line(text: str) -> str:
    # Drop ffmpeg's "[rtsp @ 0x55d0c0a4b280] " context prefix: the address changes every run.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])[:200]
