"""The command line as users run it: check-config, snap and demo, each as a real process.

Cameras are served by `campatrol sim` on 127.0.50.0/24; every process a test starts is ended
by its pid, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import psutil
import pytest
from PIL import Image

from campatrol.cli import SNAP_EXIT
from campatrol.procgroups import MARKER_VAR, parse_marker
from simhelpers import SimProcess
from test_server_lifecycle import free_port, write_toml

PASSWORD: Final = "Heron5 p@ss:/#%?&+ ü"
CLI_TIMEOUT: Final = 60.0  # seconds for one short command on a loaded 2-core machine
# Rich reads COLUMNS; 80 is what a pipe or a CI log gets, and the narrowest usual terminal.
CLI_ENV: Final = {**os.environ, "COLUMNS": "80", "CAMPATROL_CLI_PASSWORD": PASSWORD}

SIM_CAMERAS: Final = [
    {"id": "open", "host": "127.0.50.1"},
    {
        "id": "locked",
        "host": "127.0.50.2",
        "auth": "digest",
        "username": "admin",
        "password": PASSWORD,
    },
    {"id": "hung", "host": "127.0.50.3", "fault": "hang_after_accept"},
    {"id": "closed", "host": "127.0.50.4", "fault": "refuse"},
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator process for the module's snap tests."""
    path = tmp_path_factory.mktemp("sim") / "sim.toml"
    cameras = [{"port": 8554, **camera} for camera in SIM_CAMERAS]
    defaults = {"width": 320, "height": 180, "fps": 10, "gop": 10}
    write_toml(path, {"control": {"host": "127.0.0.1", "port": 0}, "defaults": defaults}, cameras)
    with SimProcess(path) as process:
        yield process


def campatrol(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run `campatrol ARGS` to its end (killed by pid after `timeout`) and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "campatrol", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )


def marked_by_owner(owner_pid: int) -> list[int]:
    """Pids of live processes whose CAMPATROL_INSTANCE names `owner_pid` as their owner."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = parse_marker(proc.environ().get(MARKER_VAR, ""))
            if marker and marker[1] == owner_pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def snap_config(path: Path, **camera_overrides: object) -> Path:
    """A config holding the module's simulated cameras as campatrol sees them."""
    cameras = [
        {"id": "open", "host": "127.0.50.1", "port": 8554, "brand": "tapo"},
        {
            "id": "locked",
            "host": "127.0.50.2",
            "port": 8554,
            "brand": "tapo",
            "username": "admin",
            "password_env": "CAMPATROL_CLI_PASSWORD",
        },
        {
            "id": "wrong",
            "host": "127.0.50.2",
            "port": 8554,
            "brand": "tapo",
            "username": "admin",
            "password": PASSWORD + "x",
        },
        {"id": "hung", "host": "127.0.50.3", "port": 8554, "brand": "tapo", "deadline": 2.0},
        {"id": "closed", "host": "127.0.50.4", "port": 8554, "brand": "tapo"},
    ]
    return write_toml(path, {"server": {"timezone": "UTC"}}, cameras)


# check-config


def test_check_config_lists_cameras_by_subnet_with_whole_masked_urls(tmp_path: Path) -> None:
    cameras = [
        {
            "id": "lobby-entrance-east",
            "name": "Lobby entrance, east side",
            "host": "127.0.51.17",
            "port": 8554,
            "brand": "dahua",
            "username": "operator",
            "password": PASSWORD,
        },
        {"id": "yard", "host": "127.0.52.1", "brand": "tapo", "stream": "sub"},
    ]
    config = write_toml(tmp_path / "good.toml", {"server": {"timezone": "UTC"}}, cameras)

    result = campatrol("check-config", str(config))

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Regression: at 80 columns the table cut the URL to "rtsp://***:***@127.0.…".
    dahua = "rtsp://***:***@127.0.51.17:8554/cam/realmonitor?channel=1&subtype=0"
    assert [line for line in lines if dahua in line] != []
    assert [line for line in lines if "rtsp://127.0.52.1:554/stream2" in line] != []
    assert lines.index("subnet 127.0.51.0/24") < lines.index("subnet 127.0.52.0/24")
    assert "2 camera(s) valid, 0 problem(s)" in result.stdout
    assert "Heron5" not in result.stdout + result.stderr
    assert result.stderr == ""


def test_check_config_names_index_id_key_and_reason_of_each_bad_entry(tmp_path: Path) -> None:
    cameras = [
        {"id": "ok", "host": "127.0.51.1", "brand": "tapo"},
        {"id": "typo", "host": "127.0.51.2", "brand": "tapo", "pasword": PASSWORD},
        {"id": "far", "host": "127.0.51.3", "brand": "tapo", "port": 0},
        {"host": "127.0.51.4", "brand": "tapo"},
        {"id": "ok", "host": "127.0.51.5", "brand": "tapo"},
    ]
    config = write_toml(tmp_path / "bad.toml", {"server": {"timezone": "UTC"}}, cameras)

    result = campatrol("check-config", str(config))

    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    # One whole line per problem, whatever the width: scripts grep these.
    assert problems == [
        f'problem: {config}: cameras[2] (id "typo"): pasword: unknown key (did you mean '
        '"password"?)',
        f'problem: {config}: cameras[3] (id "far"): port: must be between 1 and 65535',
        f"problem: {config}: cameras[4]: id: is required",
        f'problem: {config}: cameras[5] (id "ok"): id: duplicate id; already used by cameras[1]',
    ]
    assert "1 camera(s) valid, 4 problem(s)" in result.stdout
    assert "rtsp://127.0.51.1:554/stream1" in result.stdout
    assert "Heron5" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("[server]\nport = = 1\n", "not valid TOML", id="syntax"),
        pytest.param("\x89PNG\r\n\x1a\n\x00\xff", "not a TOML file", id="binary"),
        pytest.param("<html><body>camera list</body></html>\n", "not valid TOML", id="html"),
    ],
)
def test_check_config_of_a_non_toml_file_is_one_clear_fatal_error(
    tmp_path: Path, content: str, expected: str
) -> None:
    config = tmp_path / "cameras.toml"
    config.write_bytes(content.encode("latin-1"))

    result = campatrol("check-config", str(config))

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {config}: {expected}")
    assert "Traceback" not in result.stderr


def test_check_config_keeps_bracketed_words_of_the_message(tmp_path: Path) -> None:
    # Regression: rich took "[server]" and a "[bold]" key for markup and dropped them.
    config = write_toml(tmp_path / "c.toml", {"server": {"port": 70000}}, [])
    result = campatrol("check-config", str(config))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {config}: [server] port: input should be less than or equal to 65535\n"
    )

    config = tmp_path / "k.toml"
    config.write_text('[[cameras]]\nid = "b"\nhost = "127.0.51.2"\n"[bold]" = 1\n')
    result = campatrol("check-config", str(config))
    assert result.returncode == 1
    assert result.stderr == f'problem: {config}: cameras[1] (id "b"): [bold]: unknown key\n'


def test_check_config_of_a_missing_file_names_it(tmp_path: Path) -> None:
    result = campatrol("check-config", str(tmp_path / "absent.toml"))

    assert result.returncode == 2
    assert "absent.toml: cannot read configuration: No such file or directory" in result.stderr


# snap


def test_snap_writes_a_valid_jpeg_through_digest_auth(sim: SimProcess, tmp_path: Path) -> None:
    config = snap_config(tmp_path / "c.toml")
    output = tmp_path / "out.jpg"

    result = campatrol("snap", "locked", "--config", str(config), "-o", str(output))

    assert result.returncode == 0, result.stderr
    with Image.open(output) as image:
        assert image.format == "JPEG"
        assert image.size == (320, 180)
    assert f"{output}: 320x180" in result.stdout
    assert sim.camera("locked")["auth_failures"] == 0
    assert "Heron5" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("camera_id", "failure"),
    [
        pytest.param("wrong", "unauthorized", id="unauthorized"),
        pytest.param("closed", "refused", id="refused"),
        pytest.param("hung", "timeout", id="timeout"),
    ],
)
def test_snap_exit_status_names_the_failure_class(
    sim: SimProcess, tmp_path: Path, camera_id: str, failure: str
) -> None:
    config = snap_config(tmp_path / "c.toml")
    output = tmp_path / "out.jpg"

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "campatrol",
            "snap",
            camera_id,
            "-c",
            str(config),
            "-o",
            str(output),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLI_ENV,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == SNAP_EXIT[failure], stderr
    assert stderr.startswith(f"{failure}: ")
    assert not output.exists()
    assert marked_by_owner(proc.pid) == []
    assert "Heron5" not in stdout + stderr


def test_snap_exit_statuses_are_distinct_from_success_usage_and_generic_errors() -> None:
    assert len(set(SNAP_EXIT.values())) == len(SNAP_EXIT)
    assert {0, 1, 2}.isdisjoint(SNAP_EXIT.values())
    assert all(0 < status < 126 for status in SNAP_EXIT.values())  # 126+ mean shell things


def test_snap_of_an_unknown_camera_is_a_usage_error(sim: SimProcess, tmp_path: Path) -> None:
    config = snap_config(tmp_path / "c.toml")

    result = campatrol("snap", "nope", "--config", str(config), "-o", str(tmp_path / "x.jpg"))

    assert result.returncode == 2
    assert "camera 'nope' is not a valid camera of" in result.stderr


# demo

DEMO_DURATION: Final = 20.0 if os.environ.get("CAMPATROL_FULL") == "1" else 10.0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_demo_serves_twelve_cameras_and_stops_by_itself_leaving_nothing(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "campatrol", "demo", "--duration", f"{DEMO_DURATION:g}"]
    argv += ["--port", str(port), "--data-dir", str(tmp_path)]
    with open(tmp_path / "out.txt", "w+") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=CLI_ENV,
            start_new_session=True,
        )
        try:
            cameras = None
            deadline = time.monotonic() + 90  # the first run encodes 12 labelled clips
            while cameras is None and proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    cameras = httpx.get(f"http://127.0.0.1:{port}/api/cameras", timeout=5).json()
                time.sleep(0.2)
            assert cameras is not None, out.read()
            assert len(cameras) == 12
            assert {c["subnet"] for c in cameras} == {"127.0.1.0/24", "127.0.2.0/24"}

            returncode = proc.wait(DEMO_DURATION + 30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        output = out.read()

    assert returncode == 0, output[-3000:]
    assert f"http://127.0.0.1:{port}/" in output
    assert marked_by_owner(proc.pid) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_demo_whose_camera_address_is_taken_says_which_and_exits_cleanly() -> None:
    # Bug: a taken 127.0.1.1:8554 ended the demo with a traceback instead of a message.
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.1.1", 8554))
        except OSError:
            pytest.skip("127.0.1.1:8554 is already taken by something else on this host")
        holder.listen(1)
        result = campatrol("demo", "--duration", "5", "--port", str(free_port()))

    assert result.returncode == 1
    assert "cannot listen on 127.0.1.1:8554" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_snap_into_a_missing_directory_is_a_usage_error_that_creates_nothing(
    sim: SimProcess, tmp_path: Path
) -> None:
    # Bug: snap created every missing directory of a mistyped --output path.
    config = snap_config(tmp_path / "campatrol.toml")
    target = tmp_path / "no" / "such" / "dir" / "x.jpg"
    result = campatrol("snap", "open", "-o", str(target), "--config", str(config))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.timeout(120)
def test_demo_leaves_orphans_of_a_dead_instance_alone(tmp_path: Path) -> None:
    # Bug: the demo swept the whole host for orphans and ended processes it did not start.
    dead = subprocess.Popen(["true"])
    dead.wait()
    env = {**os.environ, MARKER_VAR: f"{'d' * 32}:{dead.pid}"}
    orphan = subprocess.Popen(["sleep", "120"], env=env, start_new_session=True)
    try:
        result = campatrol(
            "demo",
            "--duration",
            "3",
            "--port",
            str(free_port()),
            "--data-dir",
            str(tmp_path),
            timeout=100,
        )
        assert result.returncode == 0, result.stderr
        assert orphan.poll() is None
    finally:
        orphan.kill()
        orphan.wait()


@pytest.mark.ffmpeg_fallback
def test_snap_in_a_network_without_routes_exits_as_unreachable(tmp_path: Path) -> None:
    """`unreachable` needs a host with no route; a private network namespace gives one.

    `unshare -n` runs snap in a new network namespace whose only interface (lo) is down, so
    even 127.0.0.1 has no route and nothing can leave the namespace.
    """
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode != 0:
        pytest.skip("needs unshare -n (root, or user namespaces)")
    config = snap_config(tmp_path / "campatrol.toml")
    result = subprocess.run(
        [unshare, "-n", sys.executable, "-m", "campatrol", "snap", "open", "-o",
         str(tmp_path / "x.jpg"), "--config", str(config)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=CLI_ENV,
        timeout=CLI_TIMEOUT,
        check=False,
        start_new_session=True,
    )  # fmt: skip
    assert result.returncode == SNAP_EXIT["unreachable"], result.stderr
    assert "unreachable" in result.stderr
    assert not (tmp_path / "x.jpg").exists()
