"""Encode, cache and share the looping H.264 clips the simulated cameras stream."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from campatrol.ffmpeg import find_ffmpeg
from campatrol.sim import h264
from campatrol.sim.rtp import PacketizedUnit, packetize

logger = logging.getLogger(__name__)

CACHE_ENV: Final = "CAMPATROL_SIM_CACHE"
# Bump when the encode arguments change, so cached clips from older code are not reused.
_ENCODE_VERSION: Final = 1
CLIP_SECONDS: Final = 2.0

# Background colours by scene number (RGB). Distinct in hue and brightness so that a test can
# tell scenes apart from one decoded pixel even after lossy JPEG compression.
SCENE_PALETTE: Final[tuple[tuple[int, int, int], ...]] = (
    (32, 64, 160),  # blue
    (200, 40, 40),  # red
    (40, 170, 60),  # green
    (220, 200, 40),  # yellow
    (150, 50, 170),  # purple
    (40, 190, 200),  # cyan
    (230, 120, 30),  # orange
    (110, 110, 110),  # grey
)

_FONT_CANDIDATES: Final = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
)


def scene_color(scene: int) -> tuple[int, int, int]:
    """Return the background colour (RGB) of a scene number."""
    return SCENE_PALETTE[scene % len(SCENE_PALETTE)]


def scene_probe_point(width: int, height: int) -> tuple[int, int]:
    """Return a pixel (x, y) that always shows the scene's background colour."""
    return (width // 16, height // 2)


@dataclass(frozen=True)
class ClipSpec:
    """What a clip shows and how it is encoded; equal specs share one clip."""

    width: int
    height: int
    fps: int
    gop: int
    scene: int = 0
    label: str | None = None

    @property
    def frame_count(self) -> int:
        """Frames in the clip: whole GOPs covering at least CLIP_SECONDS."""
        gops = max(1, math.ceil(CLIP_SECONDS * self.fps / self.gop))
        return gops * self.gop


@dataclass(frozen=True)
class Clip:
    """An encoded clip: its parameter sets and its pictures packetized for RTP."""

    spec: ClipSpec
    sps: bytes
    pps: bytes
    units: tuple[PacketizedUnit, ...]

    @property
    def sprop_parameter_sets(self) -> str:
        """The SDP sprop-parameter-sets value of this clip."""
        return h264.sprop_parameter_sets(self.sps, self.pps)

    @property
    def profile_level_id(self) -> str:
        """The SDP profile-level-id of this clip."""
        return h264.profile_level_id(self.sps)


def default_cache_dir() -> Path:
    """Return the clip cache directory ($CAMPATROL_SIM_CACHE or ~/.cache/campatrol/sim)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "campatrol" / "sim"


@functools.cache
def _font_file() -> str | None:
    for candidate in _FONT_CANDIDATES:
        if os.path.isfile(candidate):
            return candidate
    matcher = shutil.which("fc-match")
    if matcher is None:
        return None
    try:
        found = subprocess.run(
            [matcher, "-f", "%{file}", "sans:bold"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return found if found and os.path.isfile(found) else None


@functools.cache
def _has_drawtext(ffmpeg_path: str) -> bool:
    try:
        listing = subprocess.run(
            [ffmpeg_path, "-hide_banner", "-filters"],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.split()[1:2] == ["drawtext"] for line in listing.splitlines() if line)


def text_overlay_available() -> bool:
    """Whether clips get text (scene number, label): needs the drawtext filter and a font."""
    return _has_drawtext(find_ffmpeg().path) and _font_file() is not None


def _filter_escape(value: str) -> str:
    # Filter option values: backslash, colon and quote are special in filtergraph syntax.
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


def _drawtext(textfile: Path, font: str, size: int, y: str) -> str:
    return (
        f"drawtext=fontfile='{_filter_escape(font)}':textfile='{_filter_escape(str(textfile))}'"
        f":fontsize={size}:fontcolor=white:borderw={max(1, size // 12)}:bordercolor=black"
        f":x=(w-text_w)/2:y={y}"
    )


def _filter_graph(spec: ClipSpec, text_files: dict[str, Path] | None) -> str:
    red, green, blue = scene_color(spec.scene)
    # The test pattern covers the middle half; the left and right quarters stay the plain
    # background colour that scene_probe_point() samples.
    inner_w, inner_h = (spec.width // 4) * 2, (spec.height // 4) * 2
    graph = (
        f"color=c=0x{red:02x}{green:02x}{blue:02x}:s={spec.width}x{spec.height}:r={spec.fps}[bg];"
        f"testsrc2=s={inner_w}x{inner_h}:r={spec.fps}[fg];"
        "[bg][fg]overlay=x=(W-w)/2:y=(H-h)/2:shortest=1"
    )
    font = _font_file()
    if text_files and font:
        size = max(12, spec.height // 8)
        graph += "," + _drawtext(text_files["scene"], font, size, str(spec.height // 32))
        if "label" in text_files:
            label_y = f"h-text_h-{spec.height // 32}"
            graph += "," + _drawtext(text_files["label"], font, max(10, size // 2), label_y)
    return graph + "[v]"


def encode_args(ffmpeg_path: str, spec: ClipSpec, graph: str, out: Path) -> list[str]:
    """Return the ffmpeg argv that encodes a clip to a raw Annex B file."""
    x264_params = f"repeat-headers=1:keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0"
    return [
        ffmpeg_path, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-filter_complex", graph, "-map", "[v]", "-frames:v", str(spec.frame_count),
        "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "baseline", "-bf", "0",
        "-crf", "26", "-pix_fmt", "yuv420p", "-x264-params", x264_params,
        "-f", "h264", str(out),
    ]  # fmt: skip


def _cache_name(spec: ClipSpec, with_text: bool) -> str:
    key = repr((_ENCODE_VERSION, spec, with_text))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".h264"


def load_clip(spec: ClipSpec, data: bytes) -> Clip:
    """Parse an Annex B clip into parameter sets and packetized pictures."""
    nals = h264.split_nal_units(data)
    sps, pps = h264.parameter_sets(nals)
    units = h264.group_access_units(nals)
    if not units or not units[0].is_keyframe:
        raise ValueError(f"clip {spec}: does not start with a keyframe")
    return Clip(spec, sps, pps, tuple(packetize(unit) for unit in units))


async def _run_encoder(argv: Sequence[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            # Cancelled while encoding: the encoder is ours alone, so kill and reap it.
            proc.kill()
            await asyncio.shield(proc.wait())
    if proc.returncode != 0:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        raise RuntimeError(f"ffmpeg clip encode failed ({proc.returncode}): {' | '.join(tail)}")


async def encode_clip(spec: ClipSpec, cache_dir: Path) -> Clip:
    """Return the clip for a spec, from the disk cache or freshly encoded into it.

    Cancellation kills the encoder. Raises RuntimeError when ffmpeg fails.
    """
    with_text = await asyncio.to_thread(text_overlay_available)
    path = cache_dir / _cache_name(spec, with_text)
    data = await asyncio.to_thread(_read_if_present, path)
    if data is None:
        work = await asyncio.to_thread(_make_workdir, cache_dir)
        try:
            text_files = (
                await asyncio.to_thread(_write_text_files, spec, work) if with_text else None
            )
            out = work / "clip.h264"
            logger.info("sim: encoding clip %dx%d@%d scene %d", *_describe(spec))
            graph = _filter_graph(spec, text_files)
            await _run_encoder(encode_args(find_ffmpeg().path, spec, graph, out))
            data = await asyncio.to_thread(_publish, out, path)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
    return await asyncio.to_thread(load_clip, spec, data)


def _make_workdir(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=cache_dir, prefix=".encode-"))


def _publish(out: Path, path: Path) -> bytes:
    data = out.read_bytes()
    # Atomic rename: concurrent simulators may encode the same clip.
    os.replace(out, path)
    return data


def _describe(spec: ClipSpec) -> tuple[int, int, int, int]:
    return (spec.width, spec.height, spec.fps, spec.scene)


def _read_if_present(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _write_text_files(spec: ClipSpec, work: Path) -> dict[str, Path]:
    # textfile= avoids escaping arbitrary label characters inside the filtergraph.
    files = {"scene": work / "scene.txt"}
    files["scene"].write_text(f"scene {spec.scene}", encoding="utf-8")
    if spec.label:
        files["label"] = work / "label.txt"
        files["label"].write_text(spec.label, encoding="utf-8")
    return files


class ClipCache:
    """Clips shared by every camera of one simulator; each spec is encoded once."""

    def __init__(self, cache_dir: Path | None = None, max_encoders: int = 2) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self._clips: dict[ClipSpec, Clip] = {}
        self._pending: dict[ClipSpec, asyncio.Task[Clip]] = {}
        self._encoders = asyncio.Semaphore(max_encoders)

    def ready(self, spec: ClipSpec) -> Clip | None:
        """Return the clip if it is already in memory, without waiting."""
        return self._clips.get(spec)

    async def get(self, spec: ClipSpec) -> Clip:
        """Return the clip for a spec, encoding it once however many callers wait for it.

        Cancelling one waiter does not cancel the encode others may wait for.
        """
        clip = self._clips.get(spec)
        if clip is not None:
            return clip
        task = self._pending.get(spec)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(spec))
            self._pending[spec] = task
        return await asyncio.shield(task)

    def prefetch(self, spec: ClipSpec) -> None:
        """Start loading a clip in the background if it is not loaded or loading yet."""
        if spec not in self._clips and spec not in self._pending:
            task = asyncio.get_running_loop().create_task(self._load(spec))
            task.add_done_callback(_log_failed_prefetch)
            self._pending[spec] = task

    async def _load(self, spec: ClipSpec) -> Clip:
        try:
            async with self._encoders:
                clip = await encode_clip(spec, self.cache_dir)
            self._clips[spec] = clip
            return clip
        finally:
            self._pending.pop(spec, None)

    async def aclose(self) -> None:
        """Cancel and await every encode still running."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _log_failed_prefetch(task: asyncio.Task[Clip]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("sim: clip encode failed: %s", task.exception())
