"""The four ways of polling cameras that bench/incident.py compares, one coroutine per row.

Each row polls the same cameras for `cycles` cycles and reports every capture attempt to the
`Tally` it is given. Rows (a)-(c) share one cycle driver, so they differ only in how a single
capture is done; row (d) is a real campatrol Service with its own patrol loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.ffmpeg import FfmpegInfo
from campatrol.service import Service

JPEG_START: Final = b"\xff\xd8"


@dataclass(frozen=True)
class Target:
    """One simulated camera as the pollers see it."""

    id: str
    host: str
    port: int
    path: str
    max_sessions: int

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"


@dataclass
class Tally:
    """Every capture attempt of one row: (camera id, succeeded, seconds)."""

    attempts: list[tuple[str, bool, float]] = field(default_factory=list)
    # Exceptions a library raised to its caller or left in a task nobody awaited, by type.
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, camera_id: str, ok: bool, seconds: float) -> None:
        self.attempts.append((camera_id, ok, seconds))


@dataclass
class RowContext:
    """What every row gets: the cameras, the incident's timings and where to report."""

    targets: list[Target]
    ffmpeg: FfmpegInfo
    cycles: int
    interval: float
    deadline: float
    concurrency: int
    # Input options given to rows (a)-(c) besides TCP transport, e.g. a short analyzeduration.
    input_options: tuple[str, ...] = ()
    tally: Tally = field(default_factory=Tally)
    # Row (a) leaves its timed-out processes here; the bench kills them by pid after the row.
    abandoned: list[asyncio.subprocess.Process] = field(default_factory=list)
    # Row (c) registers its capture threads here so the sampler can count the stuck ones.
    threads: set[threading.Thread] = field(default_factory=set)
    drained_after: float = 0.0


Capture = Callable[[Target], Awaitable[bool]]


async def drive_cycles(ctx: RowContext, capture: Capture) -> None:
    """Start a cycle every `interval` seconds; each cycle captures every camera once."""
    gate = asyncio.Semaphore(ctx.concurrency)

    async def visit(target: Target) -> None:
        async with gate:
            started = time.monotonic()
            try:
                ok = await capture(target)
            # Broad on purpose: the bench measures what the libraries raise (ha-ffmpeg 3.2.2
            # raises ProcessLookupError when ffmpeg exits just as its timeout fires), and one
            # capture's exception must not end the row.
            except Exception as exc:
                ctx.tally.errors[type(exc).__name__] += 1
                ok = False
            ctx.tally.add(target.id, ok, time.monotonic() - started)

    start = time.monotonic()
    for number in range(ctx.cycles):
        # Sleep to the cycle's slot; a cycle that overran starts the next one at once.
        await asyncio.sleep(max(0.0, start + number * ctx.interval - time.monotonic()))
        async with asyncio.TaskGroup() as tg:
            for target in ctx.targets:
                tg.create_task(visit(target))


def snapshot_argv(ffmpeg: FfmpegInfo, url: str, options: tuple[str, ...]) -> list[str]:
    """The command line people write for one still: no socket timeout, one frame to stdout."""
    return [
        ffmpeg.path, "-hide_banner", "-nostdin", "-loglevel", "error",
        "-rtsp_transport", "tcp", *options, "-i", url,
        "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-",
    ]  # fmt: skip


async def run_naive(ctx: RowContext) -> None:
    """Row (a): `ffmpeg -frames:v 1` under asyncio.wait_for, abandoned (not killed) on timeout."""

    async def capture(target: Target) -> bool:
        proc = await asyncio.create_subprocess_exec(
            *snapshot_argv(ctx.ffmpeg, target.url, ctx.input_options),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), ctx.deadline)
        except TimeoutError:
            # The incident's bug, on purpose: the wait is cancelled, the process runs on.
            ctx.abandoned.append(proc)
            return False
        return proc.returncode == 0 and out.startswith(JPEG_START)

    await drive_cycles(ctx, capture)


async def run_haffmpeg(ctx: RowContext) -> None:
    """Row (b): Home Assistant's ha-ffmpeg ImageFrame.get_image with its own timeout."""
    from haffmpeg.tools import IMAGE_JPEG, ImageFrame

    # It logs a warning per timed-out capture; the table counts them instead.
    logging.getLogger("haffmpeg").setLevel(logging.ERROR)

    async def capture(target: Target) -> bool:
        frame = ImageFrame(ctx.ffmpeg.path)
        # HA users put input options in the input string; ha-ffmpeg splits it with shlex.
        image = await frame.get_image(
            " ".join(["-rtsp_transport", "tcp", *ctx.input_options, "-i", target.url]),
            output_format=IMAGE_JPEG,
            timeout=int(ctx.deadline),
        )
        return bool(image) and image.startswith(JPEG_START)

    await drive_cycles(ctx, capture)


async def run_opencv(ctx: RowContext) -> None:
    """Row (c): cv2.VideoCapture(CAP_FFMPEG) in a thread per capture, waited for `deadline`."""
    # OpenCV warns on stderr at every timeout; the table counts them instead.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    # OpenCV reads its FFmpeg input options from this variable: "key;value|key;value".
    pairs = zip(ctx.input_options[::2], ctx.input_options[1::2], strict=True)
    options = ["rtsp_transport;tcp", *(f"{key.lstrip('-')};{value}" for key, value in pairs)]
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "|".join(options)
    millis = int(ctx.deadline * 1000)
    params: list[int] = []
    # Both properties exist from OpenCV 4.6 on; older wheels can only hope for a timely answer.
    for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
        if hasattr(cv2, name):
            params += [getattr(cv2, name), millis]

    def grab(url: str) -> bool:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        try:
            ok, picture = cap.read()
            if not ok or picture is None:
                return False
            ok, encoded = cv2.imencode(".jpg", picture)
            return bool(ok) and encoded.tobytes().startswith(JPEG_START)
        finally:
            cap.release()

    async def capture(target: Target) -> bool:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def work() -> None:
            try:
                result = grab(target.url)
            except cv2.error:
                result = False
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        # A thread cannot be killed: on timeout it is left to finish (or hang) on its own.
        thread = threading.Thread(target=work, name=f"cv2 {target.id}", daemon=True)
        ctx.threads.add(thread)
        thread.start()
        try:
            return await asyncio.wait_for(asyncio.shield(done), ctx.deadline)
        except TimeoutError:
            return False

    await drive_cycles(ctx, capture)


def patrol_cameras(ctx: RowContext) -> list[Camera]:
    """The bench's cameras as campatrol Camera entries (no hold-down: the sim keeps none)."""
    return [
        Camera(
            id=target.id,
            host=target.host,
            port=target.port,
            path=target.path,
            brand="tapo",
            max_sessions=target.max_sessions,
            transport="tcp",
            deadline=ctx.deadline,
            subnet=f"{target.host.rsplit('.', 1)[0]}.0/24",
            hold_after_kill=0.0,
        )
        for target in ctx.targets
    ]


async def run_campatrol(ctx: RowContext) -> None:
    """Row (d): a real campatrol Service patrolling the subnet until `cycles` cycles ended."""
    with tempfile.TemporaryDirectory(prefix="campatrol-bench-") as data:
        settings = Settings(
            data_dir=data,
            deadline=ctx.deadline,
            interval=ctx.interval,
            cooldown=0.0,
            subnet_concurrency=ctx.concurrency,
        )
        cameras = patrol_cameras(ctx)
        # The start-up orphan sweep is host-wide: on a machine shared with other people's test
        # runs it could end processes this bench did not start. It plays no part in the
        # incident, so the bench turns it off.
        service = Service(settings, cameras, ffmpeg=ctx.ffmpeg, sweep_orphans=False)
        async with service:
            patrol = next(iter(service.patrols.values()))
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(service.run())
                # Patrol exposes no event per cycle; its last_cycle is the public view.
                while patrol.last_cycle is None or patrol.last_cycle.number < ctx.cycles:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                runner.cancel()
            for camera in cameras:
                records = await asyncio.to_thread(service.store.recent_captures, camera.id, 10**6)
                for record in records:
                    ctx.tally.add(camera.id, record.outcome == "ok", record.duration)


ROWS: Final[dict[str, tuple[str, Callable[[RowContext], Awaitable[None]]]]] = {
    "a": ("(a) naive wait_for", run_naive),
    "b": ("(b) ha-ffmpeg", run_haffmpeg),
    "c": ("(c) OpenCV thread", run_opencv),
    "d": ("(d) campatrol", run_campatrol),
}
