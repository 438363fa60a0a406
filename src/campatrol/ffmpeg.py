"""Locate the ffmpeg binary once and learn what its version understands."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

from campatrol.errors import FfmpegNotFound

# CAMPATROL_FFMPEG: unset = PATH first, then the imageio-ffmpeg wheel; "imageio" = the wheel
# only; anything else = a path to an ffmpeg binary.
ENV_VAR: Final = "CAMPATROL_FFMPEG"


@dataclass(frozen=True)
class FfmpegInfo:
    """An ffmpeg binary and the facts about it that change how campatrol calls it."""

    path: str
    version: str
    libavformat_major: int
    source: str  # "env", "path" or "imageio-ffmpeg"
    ffprobe: str | None

    @property
    def rtsp_timeout_option(self) -> str:
        """The RTSP socket I/O timeout option (microseconds) this version accepts.

        Before libavformat 59 (FFmpeg 5.0), `-timeout` on an RTSP input meant *listen* and turned
        the client into a server; the socket timeout was `-stimeout`, which 5.0 removed.
        """
        return "-timeout" if self.libavformat_major >= 59 else "-stimeout"


def _imageio_ffmpeg() -> str | None:
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None


def _candidates() -> list[tuple[str, str]]:
    wanted = os.environ.get(ENV_VAR, "").strip()
    if wanted == "imageio":
        exe = _imageio_ffmpeg()
        return [(exe, "imageio-ffmpeg")] if exe else []
    if wanted:
        return [(wanted, "env")]
    found: list[tuple[str, str]] = []
    on_path = shutil.which("ffmpeg")
    if on_path:
        found.append((on_path, "path"))
    exe = _imageio_ffmpeg()
    if exe:
        found.append((exe, "imageio-ffmpeg"))
    return found


def _read_version(path: str) -> tuple[str, int]:
    out = subprocess.run(
        [path, "-hide_banner", "-version"],
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
        check=True,
    ).stdout
    first = out.splitlines()[0] if out else ""
    version_match = re.search(r"ffmpeg version (\S+)", first)
    lavf_match = re.search(r"libavformat\s+(\d+)\.", out)
    if not lavf_match:
        raise FfmpegNotFound(f"{path}: could not read the libavformat version from -version")
    return (version_match.group(1) if version_match else "unknown", int(lavf_match.group(1)))


def _sibling_ffprobe(ffmpeg_path: str, source: str) -> str | None:
    if source == "imageio-ffmpeg":
        return None  # the wheel ships ffmpeg only
    sibling = os.path.join(os.path.dirname(ffmpeg_path), "ffprobe")
    if os.access(sibling, os.X_OK):
        return sibling
    return shutil.which("ffprobe")


@functools.cache
def find_ffmpeg() -> FfmpegInfo:
    """Return the first working ffmpeg (see `ENV_VAR`), probed once per process.

    Raises FfmpegNotFound when no candidate runs.
    """
    problems: list[str] = []
    for path, source in _candidates():
        try:
            version, lavf = _read_version(path)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{path} ({source}): {exc}")
            continue
        return FfmpegInfo(path, version, lavf, source, _sibling_ffprobe(path, source))
    detail = "; ".join(problems) or "none on PATH and the imageio-ffmpeg package is not installed"
    raise FfmpegNotFound(f"no usable ffmpeg: {detail}")
