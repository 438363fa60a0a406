"""Every exception campatrol raises on purpose, under one root."""

from __future__ import annotations

from typing import ClassVar


class CampatrolError(Exception):
    """Root of every error campatrol raises on purpose."""


class ConfigError(CampatrolError):
    """A configuration file or entry is invalid; the message names the input and the reason."""


class FfmpegNotFound(CampatrolError):
    """No usable ffmpeg binary was found on PATH or in the imageio-ffmpeg package."""


class SupervisorError(CampatrolError):
    """The supervisor refused or failed to run a child process."""


class SupervisorClosed(SupervisorError):
    """The supervisor is shutting down and starts no new child."""


class CaptureError(CampatrolError):
    """A capture ended without a snapshot; `failure_class` says why, in one word."""

    failure_class: ClassVar[str] = "protocol"

    def __init__(self, message: str, *, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class CaptureTimeout(CaptureError):
    """The capture did not finish before its deadline."""

    failure_class = "timeout"


class CaptureRefused(CaptureError):
    """The camera refused or reset the connection."""

    failure_class = "refused"


class CaptureUnreachable(CaptureError):
    """The camera's host could not be reached or resolved."""

    failure_class = "unreachable"


class CaptureUnauthorized(CaptureError):
    """The camera rejected the credentials (RTSP 401 or 403)."""

    failure_class = "unauthorized"


class CaptureBusy(CaptureError):
    """No slot was free in time, or the camera answered that it is at its session limit."""

    failure_class = "busy"


class CaptureNotFound(CaptureError):
    """The camera does not know the stream path (RTSP 404)."""

    failure_class = "not_found"


class CaptureProtocolError(CaptureError):
    """The camera answered something that is not valid RTSP, RTP or H.264."""

    failure_class = "protocol"


class InvalidImage(CaptureError):
    """The capture produced bytes that are not a complete, decodable JPEG."""

    failure_class = "invalid_image"


class CaptureConfigError(CaptureError):
    """The capture could not start because of its own configuration (an ffmpeg option error)."""

    failure_class = "config"


class CaptureInternalError(CaptureError):
    """campatrol itself failed around the capture (e.g. the snapshot could not be stored)."""

    failure_class = "internal"


FAILURE_CLASSES: tuple[str, ...] = (
    "timeout",
    "refused",
    "unreachable",
    "unauthorized",
    "busy",
    "not_found",
    "protocol",
    "invalid_image",
    "config",
    "internal",
)
