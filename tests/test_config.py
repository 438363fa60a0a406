"""Configuration loading: settings, camera entries, per-entry problems and fatal errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from campatrol.cameras import Camera
from campatrol.config import ConfigProblem, Settings, group_by_subnet, load_config
from campatrol.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campatrol.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_minimal_file_gets_documented_defaults(tmp_path):
    loaded = load_config(write(tmp_path, ""))

    settings = loaded.settings
    assert (settings.listen, settings.port, settings.data_dir) == ("127.0.0.1", 8080, Path("data"))
    assert (settings.deadline, settings.interval, settings.cooldown) == (10.0, 60.0, 5.0)
    assert (settings.max_processes, settings.subnet_concurrency, settings.slot_wait) == (8, 1, 5.0)
    assert (settings.retention_days, settings.failing_after, settings.offline_after) == (7, 1, 3)
    assert settings.effective_backoff_base == 60.0
    assert settings.unauthorized_backoff > 30 * 60
    assert settings.grace == 2.0
    assert settings.timezone
    assert loaded.cameras == []
    assert loaded.problems == []


def test_camera_entry_becomes_camera_with_brand_and_server_defaults(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        deadline = 4.5

        [[cameras]]
        id = "door"
        name = "Front door"
        host = "127.0.1.10"
        port = 8554
        brand = "tapo"
        stream = "sub"
        username = "admin"
        password = "p@ss w:rd/#"
        """,
    )

    (camera,) = load_config(path).cameras

    assert camera == Camera(
        id="door",
        name="Front door",
        host="127.0.1.10",
        port=8554,
        path="/stream2",
        username="admin",
        password="p@ss w:rd/#",
        brand="tapo",
        max_sessions=2,
        transport="tcp",
        deadline=4.5,
        subnet="127.0.1.0/24",
        enabled=True,
        hold_after_kill=0.0,
    )
    assert camera.rtsp_url() == "rtsp://admin:p%40ss%20w%3Ard%2F%23@127.0.1.10:8554/stream2"


def test_path_wins_over_stream_and_overrides_apply(tmp_path):
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "hik-1"
        host = "[::1]"
        port = 8554
        brand = "hikvision"
        stream = "main"
        path = "/custom?x=1"
        max_sessions = 1
        transport = "udp"
        deadline = 3
        subnet = "lab"
        enabled = false
        hold_after_kill = 60
        """,
    )

    (camera,) = load_config(path).cameras

    assert camera.host == "::1"
    assert camera.path == "/custom?x=1"
    assert (camera.max_sessions, camera.transport, camera.deadline) == (1, "udp", 3.0)
    assert (camera.subnet, camera.enabled, camera.hold_after_kill) == ("lab", False, 60.0)
    assert camera.rtsp_url() == "rtsp://[::1]:8554/custom?x=1"


def test_password_env_reads_the_named_variable(tmp_path):
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "a"
        host = "127.0.1.2"
        brand = "tapo"
        username = "u"
        password_env = "CAM_A_PASSWORD"
        """,
    )

    (camera,) = load_config(path, environ={"CAM_A_PASSWORD": "from env"}).cameras

    assert camera.password == "from env"


def test_missing_password_env_is_that_cameras_problem_only(tmp_path):
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "a"
        host = "127.0.1.2"
        brand = "tapo"
        password_env = "CAM_A_PASSWORD"

        [[cameras]]
        id = "b"
        host = "127.0.1.3"
        brand = "tapo"
        """,
    )

    loaded = load_config(path, environ={})

    assert [c.id for c in loaded.cameras] == ["b"]
    assert [str(p) for p in loaded.problems] == [
        'cameras[1] (id "a"): password_env: environment variable CAM_A_PASSWORD is not set'
    ]


BAD_ENTRIES = [
    pytest.param("port = 70000", "port", "must be between 1 and 65535", id="port-range"),
    pytest.param('host = "127.0.1.300"', "host", "must be an IPv4 address", id="bad-ipv4"),
    pytest.param('host = "cam door"', "host", "must be an IPv4 address", id="host-space"),
    pytest.param('brand = "acme"', "brand", "input should be 'tapo'", id="brand"),
    pytest.param('transport = "http"', "transport", "input should be 'tcp'", id="transport"),
    pytest.param('stream = "third"', "stream", "input should be 'main'", id="stream"),
    pytest.param('path = "stream1"', "path", "must start with '/'", id="path-slash"),
    pytest.param("max_sessions = 0", "max_sessions", "greater than or equal to 1", id="sessions"),
    pytest.param("deadline = -1", "deadline", "greater than 0", id="deadline"),
    pytest.param('subnet = "127.0.1.0/33"', "subnet", "must be a network", id="subnet"),
    pytest.param('pasword = "x"', "pasword", 'unknown key (did you mean "password"?)', id="typo"),
    pytest.param("password = 1234", "password", "valid string", id="numeric-password"),
    pytest.param('password_env = "A-B"', "password_env", "environment variable name", id="env"),
]


@pytest.mark.parametrize(("line", "key", "reason"), BAD_ENTRIES)
def test_bad_entry_is_reported_with_index_id_key_and_reason_and_skipped(
    tmp_path, line, key, reason
):
    bad = {"id": '"bad"', "host": '"127.0.1.3"', "brand": '"tapo"'}
    bad_key, value = (part.strip() for part in line.split("=", 1))
    bad[bad_key] = value
    bad_table = "\n".join(f"{k} = {v}" for k, v in bad.items())
    path = write(
        tmp_path,
        '[[cameras]]\nid = "good"\nhost = "127.0.1.2"\nbrand = "tapo"\n\n'
        f"[[cameras]]\n{bad_table}\n",
    )

    loaded = load_config(path)

    assert [c.id for c in loaded.cameras] == ["good"]
    (problem,) = loaded.problems
    assert (problem.index, problem.camera_id, problem.key) == (2, "bad", key)
    assert reason in problem.reason
    assert str(problem).startswith(f'cameras[2] (id "bad"): {key}: ')


def test_problem_text_matches_the_documented_shape():
    problem = ConfigProblem(3, "door", "port", "must be between 1 and 65535")

    assert str(problem) == 'cameras[3] (id "door"): port: must be between 1 and 65535'
    assert str(ConfigProblem(4, None, "id", "is required")) == "cameras[4]: id: is required"


def test_entry_without_id_is_reported_by_index(tmp_path):
    path = write(tmp_path, '[[cameras]]\nhost = "127.0.1.2"\nbrand = "tapo"\n')

    (problem,) = load_config(path).problems

    assert str(problem) == "cameras[1]: id: is required"


def test_generic_camera_without_path_is_a_problem(tmp_path):
    path = write(tmp_path, '[[cameras]]\nid = "g"\nhost = "127.0.1.2"\n')

    (problem,) = load_config(path).problems

    assert problem.key == "path"
    assert "is required for brand 'generic'" in problem.reason


def test_duplicate_id_makes_the_second_entry_a_problem(tmp_path):
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "cam"
        host = "127.0.1.2"
        brand = "tapo"

        [[cameras]]
        id = "cam"
        host = "127.0.1.3"
        brand = "tapo"
        """,
    )

    loaded = load_config(path)

    assert [c.host for c in loaded.cameras] == ["127.0.1.2"]
    assert [str(p) for p in loaded.problems] == [
        'cameras[2] (id "cam"): id: duplicate id; already used by cameras[1]'
    ]


def test_password_and_password_env_together_are_a_problem(tmp_path):
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "cam"
        host = "127.0.1.2"
        brand = "tapo"
        password = "hunter22"
        password_env = "X"
        """,
    )

    (problem,) = load_config(path, environ={"X": "y"}).problems

    assert problem.key == "password_env"


def test_problems_never_contain_the_password(tmp_path):
    # A password that also lands in other keys' errors must still be masked everywhere.
    path = write(
        tmp_path,
        """
        [[cameras]]
        id = "cam"
        host = "hunter22 hunter22"
        brand = "tapo"
        password = "hunter22"
        subnet = "hunter22/99"
        hunter22 = 1
        """,
    )

    problems = load_config(path).problems

    assert {p.key for p in problems} == {"host", "subnet", "***"}
    assert all("hunter22" not in str(p) for p in problems)


def test_file_that_is_not_toml_names_file_line_and_column(tmp_path):
    path = write(tmp_path, '[server]\nport = 8080\n[[cameras]\nid = "x"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert str(path) in message
    assert "not valid TOML" in message
    assert "line 3" in message
    assert "column" in message


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "absent.toml"

    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read configuration"):
        load_config(path)


def test_binary_file_is_a_clear_config_error(tmp_path):
    path = tmp_path / "campatrol.toml"
    path.write_bytes(b"\xff\xd8\xff\xe0 jpeg bytes")

    with pytest.raises(ConfigError, match="not a TOML file"):
        load_config(path)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        pytest.param("port = 0", r"\[server\] port: ", id="port"),
        pytest.param('listen = "localhost:80"', r"\[server\] listen: must be an IPv4", id="listen"),
        pytest.param('timezone = "Mars/Base"', r"\[server\] timezone: must be an IANA", id="tz"),
        pytest.param(
            "max_procesess = 2",
            r'max_procesess: unknown key \(did you mean "max_processes"',
            id="typo",
        ),
        pytest.param(
            "offline_after = 1\nfailing_after = 2", "offline_after must be at least", id="rel"
        ),
        pytest.param(
            "interval = 1000\nbackoff_max = 10", "backoff_max must be at least", id="backoff"
        ),
    ],
)
def test_bad_server_setting_is_a_config_error_naming_the_key(tmp_path, server, expected):
    path = write(tmp_path, f"[server]\n{server}\n")

    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_unknown_top_level_table_is_a_config_error(tmp_path):
    path = write(tmp_path, "[sever]\nport = 1\n")

    with pytest.raises(
        ConfigError, match=r'unknown top-level key \'sever\' \(did you mean "server"'
    ):
        load_config(path)


def test_group_by_subnet_orders_networks_numerically_and_keeps_camera_order():
    cameras = [
        Camera(id="z", host="127.0.10.1", brand="tapo"),
        Camera(id="n", host="cam.example", brand="tapo"),
        Camera(id="b", host="127.0.2.9", brand="tapo"),
        Camera(id="a", host="127.0.2.1", brand="tapo"),
        Camera(id="v6", host="::1", brand="tapo"),
    ]

    groups = group_by_subnet(cameras)

    assert list(groups) == ["127.0.2.0/24", "127.0.10.0/24", "::1", "cam.example"]
    assert [c.id for c in groups["127.0.2.0/24"]] == ["b", "a"]


def test_example_config_loads_cleanly_with_loopback_hosts_only():
    loaded = load_config(REPO / "examples" / "campatrol.toml", environ={"LOBBY_PASSWORD": "x"})

    assert loaded.problems == []
    assert len(loaded.cameras) >= 4
    for camera in loaded.cameras:
        assert camera.host.startswith(("127.0.1.", "127.0.2.")), camera.host
        assert camera.port == 8554


def test_configuration_reference_documents_every_key():
    reference = (REPO / "README.md").read_text(encoding="utf-8")

    for key in Settings.model_fields:
        assert f"`{key}`" in reference, key
    for key in ("id", "name", "host", "port", "brand", "path", "stream", "username", "password",
                "password_env", "max_sessions", "transport", "deadline", "subnet", "enabled",
                "hold_after_kill"):  # fmt: skip
        assert f"`{key}`" in reference, key
