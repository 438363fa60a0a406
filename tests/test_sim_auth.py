"""Authentication and the session limit of simulated cameras, as real ffmpeg meets them."""

from __future__ import annotations

import asyncio

import pytest

from campatrol.sim import SimCameraConfig
from simhelpers import (
    STREAMING,
    Client,
    ffmpeg_frame_argv,
    ffmpeg_stream_argv,
    run_client,
    running_sim,
    wait_for,
)

AWKWARD_USER = "ad@m in/ü?#%&+"
AWKWARD_PASSWORD = "p@ss:w/o#r%d?&+ x é"
# ffmpeg percent-decodes the userinfo and then splits it at the first ':' when it answers a
# Digest challenge, so a user name with ':' cannot log in with Digest through ffmpeg; Basic sends
# "user:password" whole and works.
COLON_USER = "ad@m:in/ü"


def camera(**overrides: object) -> SimCameraConfig:
    """A small, fast camera on an ephemeral port."""
    values: dict[str, object] = {
        "id": "cam1",
        "host": "127.0.5.1",
        "port": 0,
        "width": 320,
        "height": 180,
    }
    values.update(overrides)
    return SimCameraConfig(**values)  # type: ignore[arg-type]


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("auth", "username"),
    [
        pytest.param("basic", AWKWARD_USER, id="basic"),
        pytest.param("basic", COLON_USER, id="basic-colon-user"),
        pytest.param("digest", AWKWARD_USER, id="digest"),
    ],
)
async def test_awkward_credentials_authenticate(auth, username):
    cam = camera(auth=auth, username=username, password=AWKWARD_PASSWORD)
    async with running_sim([cam]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url()), within=30)

        assert result.returncode == 0, result.stderr
        assert result.image().size == (320, 180)
        assert sim.camera("cam1").stats()["auth_failures"] == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("auth", [pytest.param("basic"), pytest.param("digest")])
async def test_wrong_password_gets_401(auth):
    cam = camera(auth=auth, username=AWKWARD_USER, password=AWKWARD_PASSWORD)
    async with running_sim([cam]) as sim:
        url = sim.camera("cam1").url().replace("x%20", "y%20")
        result = await run_client(ffmpeg_frame_argv(url), within=30)

        assert result.returncode != 0
        assert "401" in result.stderr
        assert sim.camera("cam1").stats()["auth_failures"] >= 1
        assert sim.camera("cam1").stats()["total_sessions"] == 0


@pytest.mark.timeout(60)
async def test_missing_credentials_get_401():
    cam = camera(auth="digest", username="admin", password="secret")
    async with running_sim([cam]) as sim:
        url = sim.camera("cam1").url().replace("admin:secret@", "")
        result = await run_client(ffmpeg_frame_argv(url), within=30)

    assert result.returncode != 0
    assert "401" in result.stderr


@pytest.mark.timeout(90)
async def test_third_concurrent_reader_gets_453_and_peak_stays_two():
    async with running_sim([camera(max_sessions=2)]) as sim:
        cam = sim.camera("cam1")
        async with (
            Client(ffmpeg_stream_argv(cam.url())) as one,
            Client(ffmpeg_stream_argv(cam.url())) as two,
        ):
            await one.wait_for_stderr(STREAMING, within=20)
            await two.wait_for_stderr(STREAMING, within=20)
            assert cam.stats()["streaming"] == 2
            third = await run_client(ffmpeg_frame_argv(cam.url()), within=30)

        stats = cam.stats()
        assert third.returncode != 0
        assert "453" in third.stderr
        assert stats["peak_sessions"] == 2
        assert stats["refused"] == 1
        assert stats["total_sessions"] == 2


@pytest.mark.timeout(90)
async def test_over_limit_reset_and_silence_turn_the_third_reader_away():
    cams = [
        camera(id="reset", host="127.0.5.2", max_sessions=1, over_limit="reset"),
        camera(id="silence", host="127.0.5.3", max_sessions=1, over_limit="silence"),
    ]
    async with running_sim(cams) as sim:
        reset, silence = sim.camera("reset"), sim.camera("silence")
        async with (
            Client(ffmpeg_stream_argv(reset.url())) as one,
            Client(ffmpeg_stream_argv(silence.url())) as two,
        ):
            await one.wait_for_stderr(STREAMING, within=20)
            await two.wait_for_stderr(STREAMING, within=20)
            reset_result, silence_result = await asyncio.gather(
                run_client(ffmpeg_frame_argv(reset.url()), within=30),
                run_client(ffmpeg_frame_argv(silence.url(), socket_timeout=2), within=30),
            )

            raw_reader, raw_writer = await asyncio.open_connection(reset.config.host, reset.port)
            with pytest.raises(ConnectionResetError):
                await raw_reader.read(100)
            raw_writer.close()

        # ffmpeg 5.1 reports a reset during OPTIONS as "Invalid data found when processing input".
        assert reset_result.returncode != 0
        assert silence_result.returncode != 0
        assert reset.stats()["peak_sessions"] == silence.stats()["peak_sessions"] == 1
        assert reset.stats()["refused"] == 2  # ffmpeg and the raw connection
        assert silence.stats()["refused"] == 1


@pytest.mark.timeout(60)
async def test_teardown_frees_the_slot_at_once():
    async with running_sim([camera(max_sessions=1, hold_after_drop=30)]) as sim:
        cam = sim.camera("cam1")
        async with Client(ffmpeg_stream_argv(cam.url())) as client:
            await client.wait_for_stderr(STREAMING, within=20)
            await client.terminate()  # SIGTERM: ffmpeg sends TEARDOWN
            await wait_for(lambda: cam.stats()["sessions"] == 0, within=5)
        second = await run_client(ffmpeg_frame_argv(cam.url()), within=30)

        assert second.returncode == 0, second.stderr
        assert cam.stats()["refused"] == 0


@pytest.mark.timeout(60)
async def test_killed_client_keeps_its_slot_for_hold_after_drop():
    async with running_sim([camera(max_sessions=1, hold_after_drop=30)]) as sim:
        cam = sim.camera("cam1")
        async with Client(ffmpeg_stream_argv(cam.url())) as client:
            await client.wait_for_stderr(STREAMING, within=20)
            await client.kill()  # SIGKILL: no TEARDOWN, the camera only sees the TCP close
        await wait_for(lambda: cam.stats()["open_connections"] == 0, within=5)
        second = await run_client(ffmpeg_frame_argv(cam.url()), within=30)

        assert "453" in second.stderr
        assert cam.stats()["sessions"] == 1
        assert cam.stats()["refused"] == 1
