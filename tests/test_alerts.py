"""Alerts: started once and cleared once, logged and POSTed to a loopback webhook receiver."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from campatrol.alerts import ERROR, LEAK, OFFLINE, WARNING, Alerts
from campatrol.cameras import Camera
from campatrol.config import AlertSettings, Settings, load_config
from campatrol.errors import ConfigError
from campatrol.service import Service
from campatrol.sim import SimCameraConfig
from campatrol.web import create_app
from simhelpers import running_sim

pytestmark = pytest.mark.timeout(30)

RECEIVER_HOST = "127.0.0.1"
TOKEN = "s3cr3t-hook-token"


@dataclass
class Receiver:
    """A loopback HTTP server that records the JSON bodies POSTed to it."""

    status: int = 204
    bodies: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://{RECEIVER_HOST}:{self.port}{path}?token={TOKEN}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                self.bodies.append(json.loads(await reader.readexactly(length)))
                writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def receiving(status: int = 204) -> AsyncIterator[Receiver]:
    """Run a Receiver on 127.0.0.1 and a free port for one test."""
    receiver = Receiver(status=status)
    server = await asyncio.start_server(receiver.handle, RECEIVER_HOST, 0)
    receiver.port = server.sockets[0].getsockname()[1]
    try:
        yield receiver
    finally:
        server.close()
        await server.wait_closed()


async def until(condition: Callable[[], bool], limit: float = 15.0) -> None:
    """Wait until `condition()` holds; racy by nature, it polls what the service exposes."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 (the service exposes no event)
            await asyncio.sleep(0.05)


class FakeClock:
    """A settable clock for event alerts' hold time."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_offline_camera_alerts_once_and_clears_once_with_one_post_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sims = [SimCameraConfig(id="gate", host="127.0.60.21", port=0, width=320, height=180)]
    async with receiving() as receiver, running_sim(sims) as sim:
        settings = Settings(
            data_dir=tmp_path,
            interval=0.2,
            cooldown=0.05,
            failing_after=1,
            offline_after=2,
            backoff_base=0.1,
            backoff_max=0.2,
            alerts=AlertSettings(webhook_url=receiver.url(), webhook_timeout=2.0),
        )
        sim_gate = sim.camera("gate")
        sim_gate.set_fault("reset")
        gate = Camera(id="gate", host="127.0.60.21", port=sim_gate.port, path="/stream1")
        async with Service(settings, [gate]) as service, asyncio.TaskGroup() as tg:
            transport = httpx.ASGITransport(app=create_app(service))
            client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            runner = tg.create_task(service.run())
            try:
                await until(lambda: service.alerts.is_active(OFFLINE, "gate"))
                during = (await client.get("/api/alerts")).json()
                # Several more failing cycles: the alert must neither restart nor repeat.
                cycles = service.patrols["127.0.60.0/24"].cycle_number
                await until(lambda: service.patrols["127.0.60.0/24"].cycle_number >= cycles + 3)
                sim_gate.set_fault("none")
                await until(lambda: not service.alerts.is_active(OFFLINE, "gate"))
                await until(lambda: len(receiver.bodies) >= 2)
                cycles = service.patrols["127.0.60.0/24"].cycle_number
                await until(lambda: service.patrols["127.0.60.0/24"].cycle_number >= cycles + 2)
                after = (await client.get("/api/alerts")).json()
            finally:
                runner.cancel()
                await client.aclose()

    offline = [a for a in during["active"] if a["kind"] == "offline"]
    assert [a["key"] for a in offline] == ["offline:gate"]
    assert offline[0]["started_at"].endswith("+00:00")
    assert offline[0]["cleared_at"] is None
    assert not any(a["kind"] == "offline" for a in after["active"])
    cleared = [a for a in after["recent"] if a["key"] == "offline:gate"]
    assert len(cleared) == 1
    assert cleared[0]["cleared_at"].endswith("+00:00")

    posted = [(b["event"], b["alert"]["key"]) for b in receiver.bodies]
    assert [p for p in posted if p[1] == "offline:gate"] == [
        ("start", "offline:gate"),
        ("clear", "offline:gate"),
    ]
    lines = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "campatrol.alerts" and "offline:gate" in r.getMessage()
    ]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert lines[0][1].startswith("alert offline:gate started: camera gate: offline after 2")
    assert lines[1][1].startswith("alert offline:gate cleared after")
    assert TOKEN not in caplog.text


async def test_children_over_the_camera_threshold_alert_during_the_capture(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alerts = AlertSettings(max_children_per_camera=0, max_children_total=0)
    settings = Settings(data_dir=tmp_path, alerts=alerts)
    sims = [SimCameraConfig(id="gate", host="127.0.60.22", port=0, width=320, height=180)]
    async with running_sim(sims) as sim:
        gate = Camera(id="gate", host="127.0.60.22", port=sim.camera("gate").port, path="/stream1")
        async with Service(settings, [gate]) as service:
            await service.capture_now("gate")
            active = [a.key for a in service.alerts.active() if a.kind != "orphan"]
            recent = [a.key for a in service.alerts.recent()]

    assert active == []
    assert sorted(recent) == ["children_camera:gate", "children_total:all"]
    started = [r for r in caplog.records if "children_camera:gate started" in r.getMessage()]
    cleared = [r for r in caplog.records if "children_camera:gate cleared" in r.getMessage()]
    assert [r.levelname for r in started] == ["ERROR"]
    assert [r.levelname for r in cleared] == ["INFO"]
    assert "1 child processes running, more than 0" in started[0].getMessage()


def test_event_alert_counts_occurrences_and_clears_after_the_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    alerts = Alerts(AlertSettings(event_hold=60.0), clock=clock)

    assert alerts.start(LEAK, "127.0.1.0/24", "1 leak", ERROR) is True
    clock.now += timedelta(seconds=50)
    assert alerts.start(LEAK, "127.0.1.0/24", "1 leak", ERROR) is False
    clock.now += timedelta(seconds=59)
    assert alerts.expire_events() == []
    clock.now += timedelta(seconds=1)
    [expired] = alerts.expire_events()

    assert expired.occurrences == 2
    assert alerts.active() == []
    [cleared] = alerts.recent()
    assert cleared.cleared_at == clock.now
    assert (cleared.cleared_at - cleared.started_at) == timedelta(seconds=110)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert messages == [
        ("ERROR", "alert leak:127.0.1.0/24 started: 1 leak"),
        ("INFO", "alert leak:127.0.1.0/24 cleared after 110s"),
    ]


def test_state_alert_does_not_expire_and_clear_of_inactive_is_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    alerts = Alerts(AlertSettings(event_hold=1.0), clock=clock)
    alerts.update(OFFLINE, "gate", True, "camera gate: offline", WARNING)
    clock.now += timedelta(hours=1)

    assert alerts.expire_events() == []
    assert alerts.clear(OFFLINE, "yard") is False
    assert [a.key for a in alerts.active()] == ["offline:gate"]
    assert len(caplog.records) == 1


async def test_failing_webhook_is_logged_once_without_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with receiving(status=500) as receiver:
        alerts = Alerts(AlertSettings(webhook_url=receiver.url(), webhook_timeout=2.0))
        async with asyncio.TaskGroup() as tg:
            delivering = tg.create_task(alerts.deliver_forever())
            for n in range(3):
                alerts.start(OFFLINE, f"cam{n}", f"camera cam{n}: offline", WARNING)
            await until(lambda: len(receiver.bodies) == 3)
            delivering.cancel()

    failures = [r for r in caplog.records if "delivery failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [
        f"alert webhook http://127.0.0.1:{receiver.port}/***: delivery failed: HTTP 500"
    ]
    assert TOKEN not in caplog.text


def test_full_webhook_queue_drops_notices_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No delivery task runs, so nothing drains the queue; no request is made either.
    alerts = Alerts(AlertSettings(webhook_url="http://127.0.0.1:9/hook"))
    for n in range(105):
        alerts.start(OFFLINE, f"cam{n}", "offline", WARNING)

    assert alerts.dropped == 5
    assert len([r for r in caplog.records if "queue full" in r.getMessage()]) == 1


def test_alerts_table_is_read_from_its_own_toml_table(tmp_path: Path) -> None:
    path = tmp_path / "campatrol.toml"
    path.write_text(
        "[server]\nmax_processes = 4\n\n[alerts]\nmax_children_per_camera = 2\n"
        'webhook_url = "http://127.0.0.1:8099/hook"\nwebhook_timeout = 1.5\n',
        encoding="utf-8",
    )
    settings = load_config(path).settings

    assert settings.max_processes == 4
    assert settings.alerts == AlertSettings(
        max_children_per_camera=2, webhook_url="http://127.0.0.1:8099/hook", webhook_timeout=1.5
    )
    assert load_config(tmp_path / "campatrol.toml").settings.alerts.event_hold == 600.0


def test_default_alert_settings_send_nothing() -> None:
    assert AlertSettings().webhook_url is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            '[alerts]\nwebhook_url = "ftp://127.0.0.1/x"\n',
            "[alerts] webhook_url: must be an http:// or https:// URL with a host",
            id="bad-scheme",
        ),
        pytest.param(
            "[alerts]\nwebhok_url = 1\n",
            '[alerts] webhok_url: unknown key (did you mean "webhook_url"?)',
            id="typo",
        ),
        pytest.param(
            "[alerts]\nwebhook_timeout = 0\n",
            "[alerts] webhook_timeout: input should be greater than 0",
            id="zero-timeout",
        ),
        pytest.param(
            "[server]\nalerts = {}\n",
            "[server] alerts: unknown key (write an [alerts] table)",
            id="under-server",
        ),
    ],
)
def test_bad_alerts_setting_is_a_config_error_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "campatrol.toml"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: {message}"
