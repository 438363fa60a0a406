"""The census and `campatrol ps`: real ffmpeg clients against the simulator, real process table.

Each scenario runs three ffmpeg readers: one carrying the marker of a dead campatrol owner (a
process this test started and reaped), one with this test process as its live owner, and one
without marker. Other engineers' tests may run on the same host at the same time, so asserts
look only at this test's cameras and pids, and --kill-orphans is always limited to this test's
instance id (it must never end a process the test did not start).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from campatrol.cameras import Camera
from campatrol.census import camera_endpoint, endpoint_key
from campatrol.cli import app
from campatrol.procgroups import MARKER_VAR
from campatrol.ps import format_age, format_time
from simhelpers import STREAMING, Client, ffmpeg_stream_argv, running_sim

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Sw0rd@fish:/#%? é"


@dataclass
class Scenario:
    """Three readers on two simulated cameras, plus a configured camera nobody reads."""

    config: Path
    cameras: list[Camera]
    orphan: Client
    live: Client
    foreign: Client
    dead_instance: str
    live_instance: str

    @property
    def keys(self) -> dict[str, str]:
        return {camera.id: endpoint_key(camera.host, camera.port) for camera in self.cameras}

    def pid(self, client: Client) -> int:
        assert client.proc is not None
        return client.proc.pid


def _reaped_pid() -> int:
    # A pid that belonged to a process of ours and is now free: the owner of a crashed instance.
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _marked(argv: list[str], marker: str | None) -> list[str]:
    # env(1) execs the reader in place, so the pid we hold is the reader's, marker included.
    if marker is None:
        return ["env", "-u", MARKER_VAR, *argv]
    return ["env", f"{MARKER_VAR}={marker}", *argv]


def _write_config(path: Path, cameras: list[Camera]) -> None:
    lines = ['[server]\ntimezone = "Asia/Kolkata"\n']
    for camera in cameras:
        lines.append("[[cameras]]")
        for key in ("id", "host", "port", "path", "username", "password"):
            lines.append(f"{key} = {json.dumps(getattr(camera, key), ensure_ascii=False)}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


@asynccontextmanager
async def _three_readers(tmp_path: Path) -> AsyncIterator[Scenario]:
    from campatrol.sim import SimCameraConfig

    sims = [
        SimCameraConfig(
            id="alpha",
            host="127.0.50.1",
            port=0,
            width=320,
            height=180,
            auth="basic",
            username="admin",
            password=PASSWORD,
            max_sessions=4,
        ),
        SimCameraConfig(id="beta", host="127.0.50.2", port=0, width=320, height=180),
    ]
    async with running_sim(sims) as sim, AsyncExitStack() as stack:
        alpha = Camera(
            id="alpha",
            host="127.0.50.1",
            port=sim.camera("alpha").port,
            path="/stream1",
            username="admin",
            password=PASSWORD,
        )
        beta = Camera(id="beta", host="127.0.50.2", port=sim.camera("beta").port, path="/stream1")
        # Configured but never read: its row must show zeros.
        gamma = Camera(id="gamma", host="127.0.50.3", port=8554, path="/stream1")
        cameras = [alpha, beta, gamma]
        config = tmp_path / "campatrol.toml"
        _write_config(config, cameras)

        dead_instance, live_instance = uuid.uuid4().hex, uuid.uuid4().hex
        orphan_marker = f"{dead_instance}:{_reaped_pid()}"
        live_marker = f"{live_instance}:{os.getpid()}"
        readers = [
            Client(_marked(ffmpeg_stream_argv(alpha.rtsp_url()), orphan_marker)),
            Client(_marked(ffmpeg_stream_argv(alpha.rtsp_url()), live_marker)),
            Client(_marked(ffmpeg_stream_argv(beta.rtsp_url()), None)),
        ]
        for reader in readers:
            await stack.enter_async_context(reader)
        await asyncio.gather(*(reader.wait_for_stderr(STREAMING, 20) for reader in readers))
        yield Scenario(config, cameras, *readers, dead_instance, live_instance)


async def _campatrol(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "campatrol",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _rows(report: dict[str, Any], scenario: Scenario) -> dict[str, dict[str, Any]]:
    by_key = {row["camera"]: row for row in report["cameras"]}
    return {camera_id: by_key[key] for camera_id, key in scenario.keys.items()}


def _processes(report: dict[str, Any], pids: list[int]) -> dict[int, dict[str, Any]]:
    by_pid = {process["pid"]: process for process in report["processes"]}
    return {pid: by_pid[pid] for pid in pids}


def _assert_orphan_survived(scenario: Scenario) -> None:
    # Any Service started on this host sweeps orphans of dead instances, ours included; when
    # suites run side by side that sweep, not the census, may have ended it.
    assert scenario.orphan.running, (
        "the orphan reader ended before the census looked (another process's orphan sweep?): "
        + scenario.orphan.stderr()[-200:]
    )


def _assert_no_secret(text: str, scenario: Scenario) -> None:
    for secret in (*scenario.cameras[0].secrets(), "Sw0rd"):
        assert secret not in text


async def test_ps_json_classifies_owners_counts_connections_and_masks_passwords(
    tmp_path: Path,
) -> None:
    async with _three_readers(tmp_path) as scenario:
        code, out, err = await _campatrol("ps", "--json", "--config", str(scenario.config))
        _assert_orphan_survived(scenario)
        orphan, live, foreign = (
            scenario.pid(c) for c in (scenario.orphan, scenario.live, scenario.foreign)
        )

    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"taken_at", "cameras", "processes", "totals"}
    assert datetime.fromisoformat(report["taken_at"]).utcoffset().total_seconds() == 0

    rows = _rows(report, scenario)
    assert rows["alpha"]["camera_id"] == "alpha"
    assert sorted(rows["alpha"]["pids"]) == sorted([orphan, live])
    assert rows["alpha"]["by_owner"] == {"campatrol": 1, "orphan": 1, "foreign": 0}
    assert rows["alpha"]["connections"] == 2
    assert rows["alpha"]["oldest"]["pid"] == orphan
    assert rows["beta"]["pids"] == [foreign]
    assert rows["beta"]["by_owner"] == {"campatrol": 0, "orphan": 0, "foreign": 1}
    assert rows["beta"]["connections"] == 1
    assert (rows["gamma"]["processes"], rows["gamma"]["connections"]) == (0, 0)
    assert rows["gamma"]["oldest"] is None
    order = [row["camera"] for row in report["cameras"]]
    assert order.index(scenario.keys["alpha"]) < order.index(scenario.keys["beta"])
    assert order.index(scenario.keys["beta"]) < order.index(scenario.keys["gamma"])

    processes = _processes(report, [orphan, live, foreign])
    assert processes[orphan]["owner"] == "orphan"
    assert processes[orphan]["instance"] == scenario.dead_instance
    assert processes[live]["owner"] == "campatrol"
    assert processes[live]["owner_pid"] == os.getpid()
    assert processes[foreign]["owner"] == "foreign"
    assert processes[foreign]["owner_pid"] is None
    assert [processes[pid]["connections"] for pid in (orphan, live, foreign)] == [1, 1, 1]
    alpha = scenario.cameras[0]
    assert f"rtsp://***:***@127.0.50.1:{alpha.port}/stream1" in processes[orphan]["argv"]
    started = datetime.fromisoformat(processes[live]["started"])
    assert started.utcoffset().total_seconds() == 0
    _assert_no_secret(out, scenario)


async def test_ps_tables_show_owners_and_times_in_the_display_zone_with_offset(
    tmp_path: Path,
) -> None:
    async with _three_readers(tmp_path) as scenario:
        # The zone comes from the config file (Asia/Kolkata), then --timezone wins over it.
        code, from_config, err = await _campatrol("ps", "--config", str(scenario.config))
        code2, chosen, err2 = await _campatrol("ps", "--timezone", "America/St_Johns")
        _assert_orphan_survived(scenario)
        orphan = scenario.pid(scenario.orphan)

    assert (code, code2) == (0, 0), err + err2
    assert "+05:30" in from_config and "(Asia/Kolkata)" in from_config
    assert "-03:30" in chosen or "-02:30" in chosen  # St. John's: -03:30, summer -02:30
    assert "orphan of dead campatrol" in from_config
    assert f"campatrol (pid {os.getpid()})" in from_config
    assert "foreign" in from_config
    assert f"rtsp://***:***@127.0.50.1:{scenario.cameras[0].port}/stream1" in from_config
    assert str(orphan) in from_config
    gamma_line = next(line for line in from_config.splitlines() if "127.0.50.3:8554" in line)
    assert "gamma" in gamma_line
    _assert_no_secret(from_config + chosen, scenario)


async def test_kill_orphans_ends_the_orphan_only(tmp_path: Path) -> None:
    async with _three_readers(tmp_path) as scenario:
        orphan, live, foreign = (
            scenario.pid(c) for c in (scenario.orphan, scenario.live, scenario.foreign)
        )
        # Asking for the live instance's orphans ends nothing: its owner (this test) is alive.
        code_live, out_live, _ = await _campatrol(
            "ps", "--json", "--kill-orphans", "--instance", scenario.live_instance
        )
        _assert_orphan_survived(scenario)
        code, out, err = await _campatrol(
            "ps", "--kill-orphans", "--instance", scenario.dead_instance
        )
        orphan_gone = await scenario.orphan.exits_within(5)
        live_running, foreign_running = scenario.live.running, scenario.foreign.running

    assert code_live == 0
    assert json.loads(out_live)["ended"] == []
    assert code == 0, err
    assert f"ended orphan pid {orphan} " in out
    assert out.count("ended orphan pid") == 1
    assert orphan_gone
    assert live_running and foreign_running
    assert str(live) in out and str(foreign) in out  # still listed, not ended


async def test_api_census_serves_the_same_data_as_ps_json(tmp_path: Path) -> None:
    from campatrol.config import Settings
    from campatrol.service import Service
    from campatrol.web import create_app

    async with _three_readers(tmp_path) as scenario:
        # Not entered on purpose: entering sweeps orphans host-wide, which would end this
        # test's orphan (and other tests'); the route reads only the service's cameras.
        service = Service(Settings(data_dir=tmp_path / "data"), scenario.cameras)
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/api/system/census")
        code, out, err = await _campatrol("ps", "--json", "--config", str(scenario.config))
        _assert_orphan_survived(scenario)
        pids = [scenario.pid(c) for c in (scenario.orphan, scenario.live, scenario.foreign)]

    assert response.status_code == 200
    assert code == 0, err
    served, printed = response.json(), json.loads(out)
    assert set(served) == set(printed)
    assert datetime.fromisoformat(served["taken_at"]).utcoffset().total_seconds() == 0
    for report in (served, printed):
        for row in _rows(report, scenario).values():
            row.pop("oldest")
    assert _rows(served, scenario) == _rows(printed, scenario)
    for report in (served, printed):
        for process in _processes(report, pids).values():
            process.pop("age")
    assert _processes(served, pids) == _processes(printed, pids)
    _assert_no_secret(response.text, scenario)


def test_ps_rejects_an_unknown_time_zone() -> None:
    result = CliRunner().invoke(app, ["ps", "--timezone", "Mars/Olympus"])
    assert result.exit_code == 2
    assert "Mars/Olympus" in result.output


def test_ps_refuses_instance_without_kill_orphans() -> None:
    result = CliRunner().invoke(app, ["ps", "--instance", "abc"])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["x", "-i", "rtsp://u:p@w@192.0.2.7/s"], "192.0.2.7:554", id="at-in-pw"),
        pytest.param(["x", "rtsps://[2001:db8::7]/s"], "[2001:db8::7]:322", id="rtsps-ipv6"),
        pytest.param(["x", "-i", "RTSP://Cam.Example:8554/a"], "cam.example:8554", id="dns-case"),
        pytest.param(["x", "-i", "http://192.0.2.7/snap.jpg"], None, id="http-is-not-rtsp"),
        pytest.param(["x", "rtsp://192.0.2.7:99999/"], None, id="bad-port"),
    ],
)
def test_camera_endpoint_is_parsed_from_the_rtsp_url_in_argv(
    argv: list[str], expected: str | None
) -> None:
    found = camera_endpoint(argv)
    assert (found[0] if found else None) == expected


def test_endpoint_key_shows_ipv4_mapped_addresses_as_ipv4() -> None:
    assert endpoint_key("::ffff:127.0.50.1", 554) == "127.0.50.1:554"
    assert endpoint_key("::1", 8554) == "[::1]:8554"


def test_times_and_ages_are_formatted_for_people() -> None:
    import zoneinfo

    when = datetime.fromisoformat("2026-12-04T15:02:11.5+00:00")
    assert format_time(when, zoneinfo.ZoneInfo("Asia/Kolkata")) == "2026-12-04 20:32:11+05:30"
    assert [format_age(s) for s in (42, 425, 18125, 273600)] == ["42s", "7m05s", "5h02m", "3d04h"]
