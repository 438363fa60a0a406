"""The ffmpeg driver against the simulator with real ffmpeg: snapshots and failure classes."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import socket

import psutil
import pytest
from PIL import Image

from campatrol.cameras import Camera
from campatrol.capture import capture_ffmpeg, classify_stderr, validate_jpeg
from campatrol.errors import (
    CaptureBusy,
    CaptureConfigError,
    CaptureError,
    CaptureNotFound,
    CaptureProtocolError,
    CaptureRefused,
    CaptureTimeout,
    CaptureUnauthorized,
    InvalidImage,
)
from campatrol.ffmpeg import find_ffmpeg
from campatrol.sim import SimCameraConfig
from campatrol.supervisor import Supervisor, SupervisorEvent
from simhelpers import running_sim, wait_for

PASSWORD = "p@ss w:rd/#%?&+é"
HOST = "127.0.1.1"


def camera_for(sim, camera_id: str, **overrides) -> Camera:
    """Return the campatrol Camera that points at simulated camera `camera_id`."""
    sim_camera = sim.camera(camera_id)
    config = sim_camera.config
    fields = {
        "id": camera_id,
        "host": config.host,
        "port": sim_camera.port,
        "path": config.paths["main"],
        "username": config.username,
        "password": config.password,
        "max_sessions": config.max_sessions,
        "deadline": 5.0,
    }
    return Camera(**(fields | overrides))


def assert_no_capture_left(sup: Supervisor, sim) -> None:
    assert sup.running == 0
    assert psutil.Process().children(recursive=True) == []
    for cam in sim.cameras():
        stats = cam.stats()
        assert stats["peak_sessions"] <= stats["max_sessions"], stats["id"]


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
async def test_healthy_camera_gives_a_valid_jpeg_of_its_size():
    configs = [SimCameraConfig(id="cam", host=HOST, port=0, width=640, height=360)]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        snap = await capture_ffmpeg(camera_for(sim, "cam"), sup, find_ffmpeg())

        assert (snap.width, snap.height, snap.driver) == (640, 360, "ffmpeg")
        assert snap.taken_at.utcoffset().total_seconds() == 0
        assert 0 < snap.duration < 5
        with Image.open(io.BytesIO(snap.jpeg)) as image:
            assert (image.format, image.size) == ("JPEG", (640, 360))
        assert_no_capture_left(sup, sim)
        assert sim.camera("cam").stats()["refused"] == 0


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
async def test_wrong_password_is_unauthorized_and_never_printed():
    configs = [
        SimCameraConfig(
            id="cam", host=HOST, port=0, auth="digest", username="admin", password="right"
        )
    ]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        seen_argv: list[list[str]] = []
        sup.on_event(
            lambda ev: (
                ev.kind == "spawned" and seen_argv.extend(c.masked_argv for c in sup.children())
            )
        )
        camera = camera_for(sim, "cam", password=PASSWORD)
        with pytest.raises(CaptureUnauthorized) as caught:
            await capture_ffmpeg(camera, sup, find_ffmpeg())

        printed = [str(caught.value), caught.value.stderr_tail, *map(" ".join, seen_argv)]
        for secret in camera.secrets():
            assert not any(secret in text for text in printed)
        assert "***" in " ".join(seen_argv[0])
        assert str(caught.value).startswith("camera cam: credentials rejected")
        assert_no_capture_left(sup, sim)


def free_loopback_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("fault", "expected", "overrides"),
    [
        pytest.param("none", CaptureNotFound, {"path": "/no-such-stream"}, id="not_found"),
        pytest.param("refuse", CaptureRefused, {}, id="refused"),
        pytest.param("garbage", CaptureProtocolError, {}, id="garbage"),
        pytest.param("hang_describe", CaptureTimeout, {}, id="hang_describe"),
        pytest.param("hang_play", CaptureTimeout, {}, id="hang_play"),
        pytest.param("slow_keyframe", CaptureTimeout, {}, id="slow_keyframe"),
    ],
)
@pytest.mark.timeout(60)
async def test_camera_faults_map_to_their_failure_class(fault, expected, overrides):
    configs = [SimCameraConfig(id="cam", host=HOST, port=0)]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        if fault != "none":
            sim.camera("cam").set_fault(fault)
        camera = camera_for(sim, "cam", deadline=1.5, **overrides)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(expected) as caught:
            await capture_ffmpeg(camera, sup, find_ffmpeg())

        assert loop.time() - started < 1.5 + 2.0 + 0.5  # deadline + SIGTERM grace + slack
        assert type(caught.value) is expected
        assert str(caught.value).startswith("camera cam: ")
        assert_no_capture_left(sup, sim)
        assert sim.camera("cam").stats()["refused"] == 0


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
async def test_hang_after_accept_times_out_within_the_deadline():
    configs = [SimCameraConfig(id="cam", host=HOST, port=0, fault="hang_after_accept")]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CaptureTimeout):
            await capture_ffmpeg(camera_for(sim, "cam"), sup, find_ffmpeg(), deadline=1.5)

        assert loop.time() - started < 1.5 + 2.0 + 0.5
        assert_no_capture_left(sup, sim)


@pytest.mark.timeout(60)
async def test_camera_at_its_session_limit_is_busy():
    configs = [SimCameraConfig(id="cam", host=HOST, port=0, max_sessions=1, over_limit="453")]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        camera = camera_for(sim, "cam")
        ffmpeg = find_ffmpeg()
        holder_up = asyncio.Event()
        sup.on_event(lambda ev: ev.kind == "spawned" and holder_up.set())
        # Someone else's viewer holds the only session (a client outside our slot budget).
        hold_argv = [ffmpeg.path, "-nostdin", "-loglevel", "quiet", "-rtsp_transport", "tcp"]
        hold_argv += ["-i", camera.rtsp_url(), "-c", "copy", "-f", "null", "-"]
        holder = asyncio.create_task(sup.run(hold_argv, deadline=30, purpose="viewer"))
        try:
            await holder_up.wait()
            await wait_for(lambda: sim.camera("cam").session_count() == 1, within=10)
            with pytest.raises(CaptureBusy):
                await capture_ffmpeg(camera, sup, ffmpeg)
        finally:
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
        assert sim.camera("cam").stats()["refused"] == 1
        assert_no_capture_left(sup, sim)


@pytest.mark.timeout(30)
async def test_option_error_is_a_config_failure():
    # Pretending the binary is FFmpeg 4 makes the driver pass -stimeout, which 5.0+ rejects.
    old_ffmpeg = dataclasses.replace(find_ffmpeg(), libavformat_major=58)
    camera = Camera(id="cam", host=HOST, port=free_loopback_port(HOST), deadline=5)
    async with Supervisor(max_processes=1) as sup:
        with pytest.raises(CaptureConfigError, match="camera cam: ffmpeg rejected its options"):
            await capture_ffmpeg(camera, sup, old_ffmpeg)


@pytest.mark.timeout(30)
async def test_missing_ffmpeg_binary_is_a_config_failure():
    gone = dataclasses.replace(find_ffmpeg(), path="/nonexistent/ffmpeg")
    camera = Camera(id="cam", host=HOST, port=free_loopback_port(HOST), deadline=5)
    async with Supervisor(max_processes=1) as sup:
        with pytest.raises(CaptureConfigError, match="camera cam: capture: could not start"):
            await capture_ffmpeg(camera, sup, gone)


@pytest.mark.timeout(30)
async def test_cancelled_capture_ends_its_ffmpeg():
    configs = [SimCameraConfig(id="cam", host=HOST, port=0, fault="hang_after_accept")]
    async with running_sim(configs) as sim, Supervisor(max_processes=2) as sup:
        spawned = asyncio.Event()
        pids: list[int] = []

        def note(ev: SupervisorEvent) -> None:
            if ev.kind == "spawned" and ev.pid:
                pids.append(ev.pid)
                spawned.set()

        sup.on_event(note)
        task = asyncio.create_task(
            capture_ffmpeg(camera_for(sim, "cam"), sup, find_ffmpeg(), deadline=30)
        )
        await spawned.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        assert not psutil.pid_exists(pids[0])
        assert_no_capture_left(sup, sim)


def jpeg_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


def test_validate_jpeg_returns_the_size_of_a_good_image():
    assert validate_jpeg(jpeg_bytes(64, 48)) == (64, 48)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "no image data", id="empty"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "no start-of-image", id="not_jpeg"),
        pytest.param(jpeg_bytes(64, 48)[:-200], "no end-of-image", id="truncated"),
        pytest.param(b"\xff\xd8" + b"garbage" * 20 + b"\xff\xd9", "does not decode", id="garbage"),
        pytest.param(jpeg_bytes(8, 8), "implausible JPEG size 8x8", id="tiny"),
    ],
)
def test_validate_jpeg_rejects_bad_images(data, message):
    with pytest.raises(InvalidImage, match=message):
        validate_jpeg(data)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        pytest.param("Unrecognized option 'stimeout'.", CaptureConfigError, id="option"),
        pytest.param("method DESCRIBE failed: 401 (Unauthorized)", CaptureUnauthorized, id="401"),
        pytest.param("method SETUP failed: 453 Not Enough Bandwidth", CaptureBusy, id="453"),
        pytest.param("method DESCRIBE failed: 404 Not Found", CaptureNotFound, id="404"),
        pytest.param(
            "Failed reading RTSP data: Connection reset by peer", CaptureRefused, id="rst"
        ),
        pytest.param(
            "rtsp://127.0.1.1:401/x: Operation not permitted",
            CaptureProtocolError,
            id="port_401_is_not_a_status",
        ),
    ],
)
def test_stderr_wording_maps_to_its_class(stderr, expected):
    # Wording as ffmpeg 5.1 / 9.0 print it; the capture tests above provoke each for real.
    assert classify_stderr(stderr) is expected
    assert issubclass(expected, CaptureError)
