"""`campatrol run` as a real process over a simulator process: kill, stop, bad config, secrets.

Every test starts the server with `python -m campatrol run --config FILE` in its own process
group, against cameras served by `campatrol sim` on 127.0.40.0-127.0.44.255, and ends every
process it started by pid, even when it fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, quote_plus

import httpx
import psutil
import pytest
from PIL import Image

from campatrol.procgroups import MARKER_VAR, parse_marker
from campatrol.store import Store
from simhelpers import SimProcess

STARTUP: Final = 60.0  # seconds for the server to answer /healthz on a loaded 2-core machine
HUNG_DEADLINE: Final = 30.0  # long enough that every hung capture is still running when we act

# Digest-authenticated camera with a password that needs percent-encoding in every way it can.
SECRET: Final = "Kestrel9@:/#%?&+ é"
SECRET_TOKEN: Final = "Kestrel9"  # distinctive enough to catch a partial leak too
SECRET_FORMS: Final = (SECRET, quote(SECRET, safe=""), quote(SECRET), quote_plus(SECRET))
# A password typed into a misspelt key must not leak through the problem report either.
TYPO_SECRET: Final = "Osprey4#typo"
UNSET_ENV: Final = "CAMPATROL_E2E_UNSET_PASSWORD"

SIM_CAMERAS: Final = [
    {"id": "hang-a", "host": "127.0.40.1", "fault": "hang_after_accept"},
    {"id": "good-a", "host": "127.0.41.1"},
    {"id": "good-b", "host": "127.0.41.2"},
    {"id": "hang-b", "host": "127.0.42.1", "fault": "hang_after_accept"},
    {"id": "vault", "host": "127.0.43.1", "auth": "digest", "username": "admin"},
    {"id": "vault-hang", "host": "127.0.44.1", "fault": "hang_after_accept"},
]


def toml_value(value: object) -> str:
    """Return `value` as a TOML literal (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def write_toml(path: Path, tables: Mapping[str, Mapping[str, object]], cameras: list[dict]) -> Path:
    """Write a TOML file of plain tables and a `[[cameras]]` array; return its path."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    for camera in cameras:
        lines.append("[[cameras]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in camera.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator process for the module: hanging, healthy and digest cameras."""
    cameras = [{"port": 8554, **camera} for camera in SIM_CAMERAS]
    for camera in cameras:
        if camera.get("auth"):
            camera["password"] = SECRET
    path = tmp_path_factory.mktemp("sim") / "sim.toml"
    defaults = {"width": 320, "height": 180, "fps": 10, "gop": 10}
    write_toml(path, {"control": {"host": "127.0.0.1", "port": 0}, "defaults": defaults}, cameras)
    with SimProcess(path) as process:
        yield process


def camera_entry(camera_id: str, **overrides: object) -> dict[str, object]:
    """The campatrol `[[cameras]]` entry for one simulated camera."""
    sim_camera = next(c for c in SIM_CAMERAS if c["id"] == camera_id)
    entry: dict[str, object] = {
        "id": camera_id,
        "host": sim_camera["host"],
        "port": 8554,
        "brand": "tapo",
        "deadline": HUNG_DEADLINE if "fault" in sim_camera else 10.0,
    }
    return {**entry, **overrides}


def server_settings(data_dir: Path, port: int) -> dict[str, object]:
    """A `[server]` table with short cycles so healthy cameras are captured again soon."""
    return {
        "listen": "127.0.0.1",
        "port": port,
        "data_dir": str(data_dir),
        "timezone": "UTC",
        "interval": 3.0,
        "cooldown": 0.5,
    }


class ServerProcess:
    """`campatrol run --config FILE` in its own process group, with its output collected.

    Leaving the block SIGKILLs the server if it still runs, then ends by pid every child it
    was seen to own that outlived it (which only happens when a test already failed).
    """

    def __init__(
        self, config: Path, port: int, *, verbose: bool = False, env: Mapping[str, str] = {}
    ) -> None:
        self.argv = [sys.executable, "-m", "campatrol", "run", "--config", str(config)]
        if verbose:
            self.argv.append("--verbose")
        self.env = {**os.environ, **env}
        self.env.pop(UNSET_ENV, None)
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.base_url, timeout=10.0)
        self.seen_children: dict[int, float] = {}  # pid -> create_time
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._readers: list[threading.Thread] = []

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        for stream, sink in ((self.proc.stdout, self._stdout), (self.proc.stderr, self._stderr)):
            reader = threading.Thread(target=_drain, args=(stream, sink), daemon=True)
            reader.start()
            self._readers.append(reader)
        try:
            self.wait_until(self._answers, STARTUP, "answer /healthz")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        for pid, created in self.seen_children.items():
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                if child.create_time() == created:
                    child.kill()

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return (self._stdout + self._stderr).decode("utf-8", "replace")

    def stderr(self) -> str:
        """What the server wrote to stderr (its log) so far."""
        return self._stderr.decode("utf-8", "replace")

    def _answers(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_until(self, predicate: Callable[[], Any], within: float, what: str) -> Any:
        """Poll `predicate` until it returns something truthy; fail after `within` s.

        Polling because the server is another process: there is no event to await.
        """
        deadline = time.monotonic() + within
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"server exited ({self.proc.returncode}) before it did {what}:\n"
                    f"{self.output()[-3000:]}"
                )
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"server did not {what} within {within}s:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def get_json(self, path: str) -> Any:
        """GET an API path and return its JSON body (200 required)."""
        response = self.http.get(path)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def children(self) -> list[psutil.Process]:
        """The server's live child processes (zombies excluded), remembered for clean-up."""
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.status() != psutil.STATUS_ZOMBIE:
                        self.seen_children[child.pid] = child.create_time()
                        found.append(child)
        return found

    def wait_for_captures(self, camera_ids: set[str], within: float = 40.0) -> list[dict]:
        """Wait until /api/system/processes lists a running capture of every camera given."""

        def listed() -> list[dict] | None:
            processes = self.get_json("/api/system/processes")
            self.children()
            return processes if camera_ids <= {p["camera_id"] for p in processes} else None

        return self.wait_until(listed, within, f"run captures of {sorted(camera_ids)}")

    def wait_for_snapshots(self, camera_ids: set[str], within: float = 40.0) -> list[dict]:
        """Wait until /api/cameras shows a snapshot of every camera given."""

        def captured() -> list[dict] | None:
            cameras = self.get_json("/api/cameras")
            done = {c["id"] for c in cameras if c["last_snapshot"] is not None}
            return cameras if camera_ids <= done else None

        return self.wait_until(captured, within, f"capture {sorted(camera_ids)}")


def _drain(stream: io.BufferedReader, sink: bytearray) -> None:
    for line in stream:
        sink.extend(line)


def is_gone(pid: int, created: float) -> bool:
    """Whether the process that had `pid` at `created` has exited.

    A zombie counts as gone: it holds no socket and no camera session, only a pid that its
    new parent (PID 1 after the server died) may not reap at once.
    """
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def marked_processes(instance: str) -> list[int]:
    """Pids of live processes whose CAMPATROL_INSTANCE names `instance` (an instance uuid)."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            marker = parse_marker(proc.environ().get(MARKER_VAR, ""))
            if marker and marker[0] == instance and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def instance_of(children: list[psutil.Process], server_pid: int) -> str:
    """The instance uuid the server's children carry; all of them carry the same one."""
    markers = {parse_marker(child.environ()[MARKER_VAR]) for child in children}
    assert len(markers) == 1, markers
    ((instance, owner),) = markers
    assert owner == server_pid
    return instance


def test_sigkill_of_server_ends_every_hung_capture_within_2s(
    sim: SimProcess, tmp_path: Path
) -> None:
    port = free_port()
    cameras = [camera_entry("hang-a"), camera_entry("hang-b")]
    config = write_toml(
        tmp_path / "c.toml", {"server": server_settings(tmp_path / "d", port)}, cameras
    )

    with ServerProcess(config, port) as server:
        listed = server.wait_for_captures({"hang-a", "hang-b"})
        children = server.children()
        assert {p["pid"] for p in listed} == {c.pid for c in children}
        instance = instance_of(children, server.pid)
        born = {child.pid: child.create_time() for child in children}

        os.kill(server.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        server.proc.wait(5)
        while not all(is_gone(pid, created) for pid, created in born.items()):
            assert time.monotonic() - killed_at < 2.0, [
                pid for pid, created in born.items() if not is_gone(pid, created)
            ]
            time.sleep(0.02)

        assert marked_processes(instance) == []
        assert server.proc.returncode == -signal.SIGKILL


def test_sigterm_stops_server_within_5s_with_no_child_and_a_consistent_database(
    sim: SimProcess, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "d"
    cameras = [camera_entry(cid) for cid in ("good-a", "good-b", "hang-a", "hang-b")]
    config = write_toml(tmp_path / "c.toml", {"server": server_settings(data_dir, port)}, cameras)

    with ServerProcess(config, port) as server:
        server.wait_for_snapshots({"good-a", "good-b"})

        def good_cycle_recorded() -> bool:
            patrols = {p["subnet"]: p for p in server.get_json("/api/patrols")}
            return patrols["127.0.41.0/24"]["last_cycle"] is not None

        server.wait_until(good_cycle_recorded, 30.0, "finish a cycle of 127.0.41.0/24")
        server.wait_for_captures({"hang-a", "hang-b"})
        children = server.children()
        assert len(children) >= 2
        instance = instance_of(children, server.pid)
        born = {child.pid: child.create_time() for child in children}

        os.kill(server.pid, signal.SIGTERM)
        assert server.proc.wait(5) == 0, server.output()[-3000:]
        assert [pid for pid, created in born.items() if not is_gone(pid, created)] == []
        assert marked_processes(instance) == []
        assert "Traceback" not in server.output()

    with contextlib.closing(sqlite3.connect(data_dir / "campatrol.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store = Store(data_dir)
    try:
        for camera_id in ("good-a", "good-b"):
            record = store.latest_snapshot(camera_id)
            assert record is not None
            assert record.path.read_bytes()[:2] == b"\xff\xd8"
            with Image.open(record.path) as image:
                assert image.size == (record.width, record.height) == (320, 180)
        cycle = store.last_cycle("127.0.41.0/24")
        assert cycle is not None
        assert (cycle.visited, cycle.succeeded, cycle.failed) == (2, 2, 0)
        assert store.recent_captures("good-a", 5)[0].outcome == "ok"
    finally:
        store.close()


def bad_and_good_cameras() -> list[dict[str, object]]:
    """Four bad entries between a good camera and two cameras holding SECRET."""
    return [
        camera_entry("good-a"),
        {"id": "typo", "host": "127.0.41.3", "brand": "tapo", "pasword": TYPO_SECRET},
        {"id": "badport", "host": "127.0.41.4", "port": 70000, "brand": "tapo"},
        {"id": "good-a", "host": "127.0.41.5", "brand": "tapo"},
        {"id": "noenv", "host": "127.0.41.6", "brand": "tapo", "password_env": UNSET_ENV},
        camera_entry("vault", username="admin", password=SECRET),
        camera_entry("vault-hang", username="admin", password=SECRET),
    ]


EXPECTED_PROBLEMS: Final = [
    'cameras[2] (id "typo"): pasword: unknown key',
    'cameras[3] (id "badport"): port: must be between 1 and 65535',
    'cameras[4] (id "good-a"): id: duplicate id; already used by cameras[1]',
    f'cameras[5] (id "noenv"): password_env: environment variable {UNSET_ENV} is not set',
]


def leaked_secrets(text: str) -> list[str]:
    """The forms of SECRET (and the typo'd password) that occur in `text`."""
    return [form for form in (*SECRET_FORMS, SECRET_TOKEN, TYPO_SECRET) if form in text]


def get_endpoints(server: ServerProcess, camera_ids: list[str]) -> list[str]:
    """Every GET path of the API from its OpenAPI document, with each camera id filled in."""
    paths = ["/", "/docs", "/openapi.json"]
    for path, operations in server.get_json("/openapi.json")["paths"].items():
        if "get" not in operations or path.endswith("snapshot.jpg"):
            continue
        if "{camera_id}" in path:
            paths += [path.replace("{camera_id}", camera_id) for camera_id in camera_ids]
        else:
            paths.append(path)
    return paths


def test_bad_entries_are_reported_and_skipped_and_the_password_appears_nowhere(
    sim: SimProcess, tmp_path: Path
) -> None:
    port = free_port()
    config = write_toml(
        tmp_path / "c.toml",
        {"server": server_settings(tmp_path / "d", port)},
        bad_and_good_cameras(),
    )
    valid = ["good-a", "vault", "vault-hang"]

    with ServerProcess(config, port, verbose=True) as server:
        cameras = server.wait_for_snapshots({"good-a", "vault"})
        assert sorted(c["id"] for c in cameras) == sorted(valid)
        assert {c["id"]: c["masked_url"] for c in cameras}["vault"] == (
            "rtsp://***:***@127.0.43.1:8554/stream1"
        )
        snapshot = server.http.get("/api/cameras/vault/snapshot.jpg")
        assert snapshot.status_code == 200
        assert Image.open(io.BytesIO(snapshot.content)).size == (320, 180)
        assert sim.camera("vault")["auth_failures"] == 0

        # While vault-hang's capture runs, its argv is in campatrol's own process list.
        processes = server.wait_for_captures({"vault-hang"})
        hung = next(p for p in processes if p["camera_id"] == "vault-hang")
        assert "rtsp://***:***@127.0.44.1:8554/stream1" in hung["masked_argv"]
        bodies = {path: server.http.get(path).text for path in get_endpoints(server, valid)}
        assert "/api/system/processes" in bodies and "/api/system/status" in bodies
        assert {path: leaked_secrets(body) for path, body in bodies.items()} == {
            path: [] for path in bodies
        }

        # Limitation: ffmpeg takes the URL on its command line, so `ps` shows the password
        # percent-encoded in the child's argv (never raw); only the server's own argv is clean.
        child = psutil.Process(hung["pid"])
        argv = child.cmdline()
        encoded_url = f"rtsp://admin:{quote(SECRET, safe='')}@127.0.44.1:8554/stream1"
        assert encoded_url in argv
        assert [arg for arg in argv if leaked_secrets(arg)] == [encoded_url]
        assert SECRET not in " ".join(argv)
        assert leaked_secrets(" ".join(psutil.Process(server.pid).cmdline())) == []

        os.kill(server.pid, signal.SIGTERM)
        assert server.proc.wait(5) == 0

    log = server.stderr()
    for expected in EXPECTED_PROBLEMS:
        lines = [line for line in log.splitlines() if expected in line]
        assert len(lines) == 1, (expected, log[-3000:])
        assert " ERROR " in lines[0] and str(config) in lines[0]
    assert leaked_secrets(server.output()) == []
