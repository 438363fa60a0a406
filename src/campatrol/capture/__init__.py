"""Capture drivers: each turns a camera into a Snapshot or a CaptureError leaf."""

from __future__ import annotations

from campatrol.capture.ffmpeg import build_argv, capture_ffmpeg, classify_stderr
from campatrol.capture.result import Snapshot, validate_jpeg

__all__ = ["Snapshot", "build_argv", "capture_ffmpeg", "classify_stderr", "validate_jpeg"]
