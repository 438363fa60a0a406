"""The simulator as real clients see it: RTSP served to real ffmpeg/ffprobe, and its control API."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess

import httpx
import pytest

from campatrol.ffmpeg import find_ffmpeg
from campatrol.sim import SimCameraConfig, generate_cameras, load_sim_config
from campatrol.sim.config import check_fault
from simhelpers import (
    SimProcess,
    ffmpeg_frame_argv,
    run_client,
    running_sim,
)


def camera(**overrides: object) -> SimCameraConfig:
    """A small, fast camera on an ephemeral port."""
    values: dict[str, object] = {
        "id": "cam1",
        "name": "Cam 1",
        "host": "127.0.1.1",
        "port": 0,
        "width": 320,
        "height": 180,
        "fps": 15,
        "gop": 15,
    }
    values.update(overrides)
    return SimCameraConfig(**values)  # type: ignore[arg-type]


@pytest.mark.ffmpeg_fallback
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("stream", "size"),
    [pytest.param("main", (320, 180), id="main"), pytest.param("sub", (160, 90), id="sub")],
)
async def test_ffmpeg_decodes_a_frame_of_the_configured_size(stream, size):
    async with running_sim([camera()]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url(stream)), within=30)

        assert result.returncode == 0, result.stderr
        assert result.image().size == size
        assert sim.camera("cam1").stats()["total_sessions"] == 1


@pytest.mark.timeout(60)
async def test_path_with_query_string_is_served_and_other_paths_get_404():
    dahua = {"main": "/cam/realmonitor?channel=1&subtype=0"}
    async with running_sim([camera(paths=dahua)]) as sim:
        url = sim.camera("cam1").url()
        served = await run_client(ffmpeg_frame_argv(url), within=30)
        wrong = await run_client(ffmpeg_frame_argv(url.replace("subtype=0", "subtype=9")), 30)

    assert served.returncode == 0, served.stderr
    assert served.image().size == (320, 180)
    assert wrong.returncode != 0
    assert "404" in wrong.stderr


@pytest.mark.timeout(60)
async def test_ffprobe_sees_h264_at_the_configured_size_and_rate():
    ffprobe = find_ffmpeg().ffprobe
    if ffprobe is None:
        pytest.skip("no ffprobe next to this ffmpeg (the imageio-ffmpeg wheel ships none)")
    async with running_sim([camera(fps=10, gop=20)]) as sim:
        argv = [ffprobe, "-v", "error", "-rtsp_transport", "tcp", "-of", "json"]
        argv += ["-show_entries", "stream=codec_name,width,height,r_frame_rate"]
        result = await run_client([*argv, sim.camera("cam1").url()], within=30)

    assert result.returncode == 0, result.stderr
    (stream,) = json.loads(result.stdout)["streams"]
    assert stream == {"codec_name": "h264", "width": 320, "height": 180, "r_frame_rate": "10/1"}


@pytest.mark.timeout(60)
async def test_control_api_reports_cameras_and_switches_faults():
    async with (
        running_sim([camera(), camera(id="cam2", host="127.0.1.2")]) as sim,
        httpx.AsyncClient(base_url=sim.control_url) as http,
    ):
        listing = (await http.get("/cameras")).json()
        fault = await http.post("/cameras/cam2/fault", json={"fault": "stall", "after": 1.5})
        bad = await http.post("/cameras/cam2/fault", json={"fault": "melt"})
        missing = await http.post("/cameras/nope/scene", json={"scene": 1})
        reset = await http.post("/reset-counters")

        assert [entry["id"] for entry in listing] == ["cam1", "cam2"]
        keys = {"id", "url", "sessions", "peak_sessions", "total_sessions", "refused"}
        assert keys | {"max_sessions", "fault", "scene"} <= set(listing[0])
        assert listing[1]["url"] == sim.camera("cam2").url()
        assert fault.status_code == 200
        assert fault.json()["fault"] == "stall"
        assert fault.json()["fault_params"] == {"after": 1.5}
        assert sim.camera("cam2").fault == "stall"
        assert bad.status_code == 400
        assert missing.status_code == 404
        assert reset.json() == {"ok": True}


def test_fault_names_and_parameters_are_checked():
    assert check_fault("lockout", {"after_failures": 2}) == (
        "lockout",
        {"after_failures": 2.0, "seconds": 30.0},
    )
    with pytest.raises(ValueError, match="unknown fault 'melt'"):
        check_fault("melt", {})
    with pytest.raises(ValueError, match="takes no parameter delay"):
        check_fault("stall", {"delay": 1})
    with pytest.raises(ValueError, match="not a loopback address"):
        camera(host="192.0.2.10")


def test_generated_cameras_spread_over_loopback_subnets():
    cameras = generate_cameras(5, 2)

    assert [(c.id, c.host, c.port, c.name) for c in cameras] == [
        ("s1c1", "127.0.1.1", 8554, "Sim 1-1"),
        ("s1c2", "127.0.1.2", 8554, "Sim 1-2"),
        ("s1c3", "127.0.1.3", 8554, "Sim 1-3"),
        ("s2c1", "127.0.2.1", 8554, "Sim 2-1"),
        ("s2c2", "127.0.2.2", 8554, "Sim 2-2"),
    ]
    assert cameras[0].paths == {"main": "/stream1", "sub": "/stream2"}
    assert cameras[0].max_sessions == 2


def test_config_file_merges_defaults_and_names_bad_entries(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(
        "[control]\nport = 0\n[defaults]\nwidth = 320\nheight = 180\n"
        '[[cameras]]\nid = "a"\nhost = "127.0.3.1"\nauth = "digest"\nusername = "u"\n'
        '[[cameras]]\nid = "b"\nhost = "127.0.3.2"\npaths = { main = "/live" }\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[[cameras]]\nid = "a"\ncolour = "red"\n')

    config = load_sim_config(good)
    assert config.control_port == 0
    assert [(c.id, c.width, c.auth) for c in config.cameras] == [
        ("a", 320, "digest"),
        ("b", 320, "none"),
    ]
    assert config.cameras[1].paths == {"main": "/live"}
    with pytest.raises(Exception, match=r"bad.toml: cameras\[0\]: unknown key\(s\) colour"):
        load_sim_config(bad)


@pytest.mark.timeout(90)
def test_sim_command_serves_a_config_file_and_stops_on_sigterm(tmp_path):
    config = tmp_path / "sim.toml"
    config.write_text(
        '[control]\nhost = "127.0.0.1"\nport = 0\n'
        '[[cameras]]\nid = "p1"\nhost = "127.0.4.1"\nport = 0\nwidth = 320\nheight = 180\n'
        'auth = "basic"\nusername = "admin"\npassword = "p@ss word"\n'
    )
    sim = SimProcess(config)
    with sim:
        (entry,) = sim.cameras()
        result = subprocess.run(
            ffmpeg_frame_argv(entry["url"]), capture_output=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr[-500:]
        assert sim.camera("p1")["total_sessions"] == 1
        assert sim.set_scene("p1", 2)["scene"] == 2
    assert sim.proc is not None and sim.proc.returncode == 0
    assert "p@ss" not in sim.output()
    assert "stopped" in sim.output()


async def _rtsp_request(reader, writer, method: str, uri: str, cseq: int, extra: str = "") -> str:
    """Send one RTSP request on a raw connection and return the response head."""
    writer.write(f"{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = re.search(r"Content-Length: (\d+)", head)
    if length:
        head += (await reader.readexactly(int(length.group(1)))).decode()
    return head


@pytest.mark.timeout(30)
async def test_idle_session_times_out_and_frees_its_slot():
    async with running_sim([camera(session_timeout=1, max_sessions=1)]) as sim:
        cam = sim.camera("cam1")
        reader, writer = await asyncio.open_connection(cam.config.host, cam.port)
        try:
            describe = await _rtsp_request(reader, writer, "DESCRIBE", cam.url(), 1)
            transport = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
            setup = await _rtsp_request(
                reader, writer, "SETUP", cam.url() + "/trackID=0", 2, transport
            )
            assert cam.stats()["sessions"] == 1
            # No keep-alive: the camera expires the session after 1 s and drops the connection.
            closed = await asyncio.wait_for(reader.read(), timeout=10)
        finally:
            writer.close()

        assert "sprop-parameter-sets=" in describe and "packetization-mode=1" in describe
        assert "Session: " in setup and ";timeout=1" in setup
        assert closed == b""
        assert cam.stats()["sessions"] == 0


@pytest.mark.timeout(60)
async def test_camera_with_awkward_label_streams():
    async with running_sim([camera(label="Cam: 'ü' 100% \\ {x}")]) as sim:
        result = await run_client(ffmpeg_frame_argv(sim.camera("cam1").url()), within=30)

    assert result.returncode == 0, result.stderr
    assert result.image().size == (320, 180)


@pytest.mark.timeout(60)
def test_sim_command_stops_on_sigint_and_closes_every_socket(tmp_path):
    config = tmp_path / "sim.toml"
    config.write_text(
        '[control]\nhost = "127.0.0.1"\nport = 0\n'
        '[[cameras]]\nid = "i1"\nhost = "127.0.4.2"\nport = 0\nwidth = 320\nheight = 180\n'
        '[[cameras]]\nid = "i2"\nhost = "127.0.4.3"\nport = 0\nwidth = 320\nheight = 180\n'
    )
    with SimProcess(config) as sim:
        endpoints = [(entry["host"], entry["port"]) for entry in sim.cameras()]
        control = httpx.URL(sim.control_url)
        endpoints.append((control.host, control.port))
        os.kill(sim.pid, signal.SIGINT)
        assert sim.proc is not None
        assert sim.proc.wait(15) == 0
    for host, port in endpoints:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, port), timeout=5).close()
