"""Every simulator fault makes a real ffmpeg client fail or hang as a real camera would.

Each test bounds its client with its own limit and kills it afterwards (by pid, via Client).
"""

from __future__ import annotations

import pytest

from campatrol.sim import SimCameraConfig, scene_color, scene_probe_point
from simhelpers import (
    Client,
    ffmpeg_frame_argv,
    ffmpeg_stream_argv,
    run_client,
    running_sim,
)

# Long enough for a healthy camera to deliver a frame on a busy 2-core machine; a client still
# running after it is a client that hangs.
HANG_BOUND = 4.0


def camera(**overrides: object) -> SimCameraConfig:
    """A small, fast camera on an ephemeral port."""
    values: dict[str, object] = {
        "id": "cam1",
        "host": "127.0.6.1",
        "port": 0,
        "width": 320,
        "height": 180,
    }
    values.update(overrides)
    return SimCameraConfig(**values)  # type: ignore[arg-type]


def close_to(pixel: tuple[int, int, int], rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    """Whether a decoded pixel matches a colour within lossy-compression error."""
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, rgb, strict=True))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("fault", "holds_session"),
    [
        pytest.param("hang_after_accept", False, id="after_accept"),
        pytest.param("hang_options", False, id="options"),
        pytest.param("hang_describe", False, id="describe"),
        pytest.param("hang_setup", False, id="setup"),
        pytest.param("hang_play", True, id="play"),
    ],
)
async def test_hang_faults_hang_a_client_without_socket_timeout(fault, holds_session):
    async with running_sim([camera(fault=fault)]) as sim:
        cam = sim.camera("cam1")
        result = await run_client(ffmpeg_frame_argv(cam.url()), within=HANG_BOUND)
        held_while_hung = cam.stats()["total_sessions"]

    assert result.hung, result.stderr
    assert held_while_hung == (1 if holds_session else 0)


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(30)
async def test_hang_fault_fails_a_client_with_socket_timeout():
    async with running_sim([camera(fault="hang_describe")]) as sim:
        argv = ffmpeg_frame_argv(sim.camera("cam1").url(), socket_timeout=1)
        result = await run_client(argv, within=15)

    assert not result.hung
    assert result.returncode != 0


@pytest.mark.timeout(40)
async def test_stall_stops_the_video_but_keeps_the_connection_open():
    async with running_sim([camera(), camera(id="stall", host="127.0.6.2")]) as sim:
        healthy, stalled = sim.camera("cam1"), sim.camera("stall")
        stalled.set_fault("stall", after=1)
        # 30 frames = 2 s at 15 fps: the healthy camera delivers them, the stalled one never.
        finished = await run_client(ffmpeg_stream_argv(healthy.url(), frames=30), within=20)
        async with Client(ffmpeg_stream_argv(stalled.url(), frames=30)) as client:
            exited = await client.exits_within(2 + HANG_BOUND)
            stats = stalled.stats()

    assert finished.returncode == 0, finished.stderr
    assert not exited, client.stderr()
    assert stats["open_connections"] == 1
    assert stats["streaming"] == 1


@pytest.mark.timeout(30)
async def test_reset_fault_fails_the_client_at_once():
    async with running_sim([camera(fault="reset")]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url()), within=15)

    assert not result.hung
    assert result.returncode != 0


@pytest.mark.timeout(40)
async def test_refuse_closes_the_port_until_cleared():
    async with running_sim([camera()]) as sim:
        cam = sim.camera("cam1")
        cam.set_fault("refuse")
        refused = await run_client(ffmpeg_frame_argv(cam.url()), within=15)
        cam.set_fault("none")
        await cam.wait_listening()
        served = await run_client(ffmpeg_frame_argv(cam.url()), within=20)

    assert refused.returncode != 0
    assert "refused" in refused.stderr.lower()
    assert served.returncode == 0, served.stderr


@pytest.mark.timeout(30)
async def test_reject_auth_answers_401_to_right_credentials():
    cam_config = camera(auth="digest", username="admin", password="right", fault="reject_auth")
    async with running_sim([cam_config]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url()), within=15)

    assert result.returncode != 0
    assert "401" in result.stderr


@pytest.mark.timeout(40)
async def test_lockout_rejects_right_credentials_after_k_failures():
    cam_config = camera(auth="basic", username="admin", password="right")
    async with running_sim([cam_config]) as sim:
        cam = sim.camera("cam1")
        cam.set_fault("lockout", after_failures=2, seconds=600)
        wrong = cam.url().replace(":right@", ":wrong@")
        for _ in range(2):
            await run_client(ffmpeg_frame_argv(wrong), within=15)
        locked = await run_client(ffmpeg_frame_argv(cam.url()), within=15)
        cam.set_fault("none")
        unlocked = await run_client(ffmpeg_frame_argv(cam.url()), within=20)

    assert locked.returncode != 0
    assert "401" in locked.stderr
    assert unlocked.returncode == 0, unlocked.stderr


@pytest.mark.timeout(30)
async def test_garbage_answer_fails_the_client():
    async with running_sim([camera(fault="garbage")]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url()), within=15)

    assert not result.hung
    assert result.returncode != 0


@pytest.mark.timeout(40)
async def test_non_keyframe_start_gives_a_grey_first_picture_unless_keyframes_only():
    async with running_sim([camera(scene=1, gop=30, fault="non_keyframe_start")]) as sim:
        url = sim.camera("cam1").url()
        shown = await run_client(ffmpeg_frame_argv(url, extra_input=["-flags2", "+showall"]), 20)
        keyframe = await run_client(
            ffmpeg_frame_argv(url, extra_input=["-skip_frame", "nokey"]), 20
        )

    probe = scene_probe_point(320, 180)
    assert shown.returncode == keyframe.returncode == 0, shown.stderr + keyframe.stderr
    assert not close_to(shown.image().getpixel(probe), scene_color(1))
    assert close_to(keyframe.image().getpixel(probe), scene_color(1))


@pytest.mark.timeout(30)
async def test_slow_keyframe_hangs_a_client_despite_its_socket_timeout():
    async with running_sim([camera(fault="slow_keyframe", fault_params={"delay": 60})]) as sim:
        argv = ffmpeg_frame_argv(sim.camera("cam1").url(), socket_timeout=1)
        result = await run_client(argv, within=HANG_BOUND)

    assert result.hung, result.stderr


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
async def test_scene_change_shows_in_a_frame_decoded_after_it():
    async with running_sim([camera(scene=0)]) as sim:
        cam = sim.camera("cam1")
        before = await run_client(ffmpeg_frame_argv(cam.url()), within=20)
        cam.set_scene(3)
        after = await run_client(ffmpeg_frame_argv(cam.url()), within=20)

    probe = scene_probe_point(320, 180)
    assert close_to(before.image().getpixel(probe), scene_color(0))
    assert close_to(after.image().getpixel(probe), scene_color(3))
