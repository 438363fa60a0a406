"""Camera model: URL building, credential masking, presets and default subnets."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from campatrol.cameras import BRAND_PRESETS, Camera, default_subnet, mask_secrets

AWKWARD_PASSWORDS = [
    pytest.param("p@ss:w/rd", id="at-colon-slash"),
    pytest.param("a#b%c?d&e+f", id="hash-percent-query-amp-plus"),
    pytest.param("with space", id="space"),
    pytest.param("pässwörd€", id="non-ascii"),
    pytest.param("%41", id="looks-encoded"),
]


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
def test_rtsp_url_percent_encodes_credentials_so_they_round_trip(password):
    camera = Camera(id="door", host="127.0.1.5", port=8554, username="ad min@x", password=password)

    parts = urlsplit(camera.rtsp_url())

    assert parts.hostname == "127.0.1.5"
    assert parts.port == 8554
    assert unquote(parts.username) == "ad min@x"
    assert unquote(parts.password) == password


def test_rtsp_url_brackets_ipv6_hosts():
    camera = Camera(id="v6", host="::1", port=8554, path="/stream1")

    assert camera.rtsp_url() == "rtsp://[::1]:8554/stream1"


def test_rtsp_url_keeps_path_and_query_verbatim():
    path = "/cam/realmonitor?channel=1&subtype=0"
    camera = Camera(id="dh", host="127.0.2.3", port=8554, path=path, username="u", password="p")

    assert camera.rtsp_url() == f"rtsp://u:p@127.0.2.3:8554{path}"


def test_rtsp_url_without_credentials_has_no_userinfo():
    camera = Camera(id="open", host="127.0.1.1", port=8554, path="/live")

    assert camera.rtsp_url() == "rtsp://127.0.1.1:8554/live"
    assert camera.masked_url() == "rtsp://127.0.1.1:8554/live"


@pytest.mark.parametrize("password", AWKWARD_PASSWORDS)
def test_masked_url_shows_no_credential(password):
    camera = Camera(id="door", host="127.0.1.5", port=8554, username="admin", password=password)

    masked = camera.masked_url()

    assert masked == "rtsp://***:***@127.0.1.5:8554/"
    for secret in camera.secrets():
        assert secret not in masked


def test_masked_url_hides_a_password_carried_in_the_query_string():
    camera = Camera(
        id="q", host="127.0.1.9", port=8554, path="/live?user=u&pwd=hunter22", password="hunter22"
    )

    assert camera.masked_url() == "rtsp://***:***@127.0.1.9:8554/live?user=u&pwd=***"


def test_secrets_hold_raw_and_encoded_password_but_not_the_user_name():
    camera = Camera(id="door", host="127.0.1.5", username="admin", password="a b/c")

    assert set(camera.secrets()) == {"a b/c", "a%20b%2Fc", "a+b%2Fc"}
    assert Camera(id="x", host="127.0.1.5", username="admin").secrets() == ()


def test_repr_never_shows_the_password():
    camera = Camera(id="door", host="127.0.1.5", username="admin", password="s3cr3t!")

    assert "s3cr3t!" not in repr(camera)
    assert "s3cr3t!" not in str(camera)


def test_mask_secrets_masks_argv_and_stderr_lines():
    camera = Camera(id="door", host="127.0.1.5", port=8554, username="admin", password="p@ss w")
    argv = f"ffmpeg -rtsp_transport tcp -i {camera.rtsp_url()} -frames:v 1 -"
    stderr = "[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized (password was p@ss w)"

    assert mask_secrets(argv, camera.secrets()) == (
        "ffmpeg -rtsp_transport tcp -i rtsp://***:***@127.0.1.5:8554/ -frames:v 1 -"
    )
    assert mask_secrets(stderr, camera.secrets()) == (
        "[rtsp @ 0x1] method DESCRIBE failed: 401 Unauthorized (password was ***)"
    )


def test_mask_secrets_masks_longest_secret_first():
    assert mask_secrets("key=abcdef", ["abc", "abcdef"]) == "key=***"


def test_mask_secrets_masks_unknown_userinfo_including_a_raw_at_sign():
    text = "open rtsp://bob:p@ss@127.0.1.2:554/x and http://carol@127.0.0.1/y"

    assert mask_secrets(text, []) == (
        "open rtsp://***:***@127.0.1.2:554/x and http://***@127.0.0.1/y"
    )


def test_mask_secrets_leaves_urls_without_userinfo_alone():
    text = "rtsp://127.0.1.2:554/cam/realmonitor?channel=1&subtype=0 and mail@example"

    assert mask_secrets(text, ["", ""]) == text


def test_default_subnet_is_the_ipv4_slash_24_or_the_host_itself():
    assert default_subnet("127.0.1.77") == "127.0.1.0/24"
    assert default_subnet("::1") == "::1"
    assert default_subnet("cam-door.example") == "cam-door.example"


def test_camera_fills_brand_defaults_and_subnet():
    camera = Camera(id="t", host="127.0.2.9", brand="tapo")

    assert camera.max_sessions == 2
    assert camera.hold_after_kill == 0.0
    assert camera.subnet == "127.0.2.0/24"
    assert camera.name == "t"


def test_brand_presets_match_the_field_notes():
    assert (BRAND_PRESETS["tapo"].main, BRAND_PRESETS["tapo"].sub) == ("/stream1", "/stream2")
    assert BRAND_PRESETS["tapo"].max_sessions == 2
    assert BRAND_PRESETS["hikvision"].main == "/Streaming/Channels/101"
    assert BRAND_PRESETS["hikvision"].max_sessions == 4
    assert BRAND_PRESETS["dahua"].sub == "/cam/realmonitor?channel=1&subtype=1"
    assert BRAND_PRESETS["reolink"].main == "/h264Preview_01_main"
    assert BRAND_PRESETS["generic"].main is None
    assert BRAND_PRESETS["generic"].max_sessions == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param({"port": 0}, "port must be between 1 and 65535", id="port"),
        pytest.param({"transport": "http"}, "transport must be", id="transport"),
        pytest.param({"brand": "acme"}, "unknown brand", id="brand"),
        pytest.param({"path": "stream1"}, "path must start with", id="path"),
        pytest.param({"max_sessions": 0}, "max_sessions must be at least 1", id="sessions"),
    ],
)
def test_camera_rejects_invalid_values(changes, message):
    with pytest.raises(ValueError, match=message):
        Camera(id="bad", host="127.0.1.1", **changes)
