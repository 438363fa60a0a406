"""Prometheus metrics of a real Service over the simulator: exact counts, stable names."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from campatrol.config import AlertSettings, Settings
from campatrol.errors import CaptureBusy, CaptureError
from campatrol.sim import SimCameraConfig
from simhelpers import camera_for, running_sim, serving

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
SUBNET = "127.0.60.0/24"
PASSWORD = "Zq9@metrics:/#%? pw"

# The interface: every family /metrics exposes, with its type and label names. README.md
# documents the same table; changing either is a breaking change for dashboards.
EXPECTED_FAMILIES = {
    "captures": ("counter", ("camera", "outcome")),
    "capture_duration_seconds": ("histogram", ("outcome",)),
    "children": ("gauge", ("purpose",)),
    "kills": ("counter", ("reason", "signal")),
    "slot_waits": ("counter", ()),
    "slot_busy": ("counter", ("camera",)),
    "sessions_in_use": ("gauge", ("camera",)),
    "cycle_duration_seconds": ("histogram", ("subnet",)),
    "leaks": ("counter", ()),
    "orphans_ended": ("counter", ()),
    "watchdog_kills": ("counter", ()),
    "event_loop_lag_seconds": ("histogram", ()),
    "event_loop_lag_last_seconds": ("gauge", ()),
}


def _sim(camera_id: str, host: str, **overrides: Any) -> SimCameraConfig:
    values: dict[str, Any] = {"id": camera_id, "host": host, "port": 0, "width": 320}
    values.update({"height": 180, "fps": 15, "gop": 15, **overrides})
    return SimCameraConfig(**values)


async def _samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def _value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _matching(
    samples: dict[tuple[str, frozenset], float], name: str, keep: Callable[[dict], bool]
) -> dict[frozenset, float]:
    return {lbl: v for (n, lbl), v in samples.items() if n == name and keep(dict(lbl))}


async def test_cycle_counts_every_capture_by_camera_and_outcome(tmp_path: Path) -> None:
    sims = [
        _sim("gate", "127.0.60.1"),
        _sim("yard", "127.0.60.2"),
        _sim("door", "127.0.60.3", auth="digest", username="admin", password="right"),
        _sim("shed", "127.0.60.4", fault="reset"),
    ]
    settings = Settings(data_dir=tmp_path, subnet_concurrency=4)
    async with running_sim(sims) as sim:
        cameras = [
            camera_for(sim, "gate"),
            camera_for(sim, "yard"),
            camera_for(sim, "door", username="admin", password=PASSWORD),
            camera_for(sim, "shed"),
        ]
        async with serving(settings, cameras) as (service, client):
            stats = await service.patrols[SUBNET].run_cycle()
            await service.capture_now("gate")
            samples = await _samples(client)
            text = (await client.get("/metrics")).text
            # Other test runs on this host may leave orphans that the start-up sweep ends.
            orphans = len(service.orphans_ended)

    assert (stats.visited, stats.succeeded, stats.failed) == (4, 2, 2)
    captures = _matching(samples, "captures_total", lambda labels: True)
    assert {tuple(sorted(k)): v for k, v in captures.items()} == {
        (("camera", "gate"), ("outcome", "ok")): 2.0,
        (("camera", "yard"), ("outcome", "ok")): 1.0,
        (("camera", "door"), ("outcome", "unauthorized")): 1.0,
        (("camera", "shed"), ("outcome", service.health("shed").last_error_class)): 1.0,
    }
    assert _value(samples, "capture_duration_seconds_count", outcome="ok") == 3.0
    assert _value(samples, "cycle_duration_seconds_count", subnet=SUBNET) == 1.0
    assert _value(samples, "leaks_total") == 0.0
    assert _value(samples, "watchdog_kills_total") == 0.0
    assert _value(samples, "orphans_ended_total") == orphans
    assert _value(samples, "children", purpose=f"patrol:{SUBNET}") == 0.0
    assert _value(samples, "children", purpose="manual") == 0.0
    for camera_id in ("gate", "yard", "door", "shed"):
        assert _value(samples, "sessions_in_use", camera=camera_id) == 0.0
    for secret in (PASSWORD, "Zq9", "metrics:/", "admin"):
        assert secret not in text


async def test_slot_refusal_counts_a_wait_and_a_busy_for_that_camera(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, slot_wait=0.1)
    async with running_sim([_sim("gate", "127.0.60.5")]) as sim:
        gate = camera_for(sim, "gate", max_sessions=1)
        async with serving(settings, [gate]) as (service, client):
            async with service.slots.lease("gate", timeout=1.0):
                with pytest.raises(CaptureBusy):
                    await service.capture_now("gate")
                held = await _samples(client)
            after = await _samples(client)

    assert _value(held, "sessions_in_use", camera="gate") == 1.0
    assert _value(held, "slot_waits_total") == 1.0
    assert _value(held, "slot_busy_total", camera="gate") == 1.0
    assert _value(held, "captures_total", camera="gate", outcome="busy") == 1.0
    # A refused slot starts no process, so it has no duration.
    assert _value(held, "capture_duration_seconds_count", outcome="busy") is None
    assert _value(after, "sessions_in_use", camera="gate") == 0.0


async def test_watchdog_kill_is_counted_once_and_raises_an_alert(tmp_path: Path) -> None:
    # The watchdog (another module) kills through Supervisor.terminate(pid, reason="watchdog")
    # and its event reaches the hook exactly like this call's.
    settings = Settings(data_dir=tmp_path, grace=0.5)
    sims = [_sim("stuck", "127.0.60.6", fault="hang_after_accept", max_sessions=1)]
    async with running_sim(sims) as sim:
        stuck = camera_for(sim, "stuck", max_sessions=1, deadline=20.0)
        async with serving(settings, [stuck]) as (service, client):
            capture = asyncio.create_task(service.capture_now("stuck"))
            try:
                while not service.supervisor.children():  # noqa: ASYNC110 (no event to await)
                    await asyncio.sleep(0.02)  # racy by nature: waits for the spawn to register
                pid = service.supervisor.children()[0].pid
                live = await _samples(client)
                assert await service.supervisor.terminate(pid, reason="watchdog")
                with pytest.raises(CaptureError):
                    await capture
            finally:
                capture.cancel()
            samples = await _samples(client)
            alerts = (await client.get("/api/alerts")).json()

    assert _value(live, "children", purpose="manual") == 1.0
    assert _value(samples, "children", purpose="manual") == 0.0
    assert _value(samples, "watchdog_kills_total") == 1.0
    assert _value(samples, "kills_total", signal="SIGTERM", reason="watchdog") == 1.0
    active = [a for a in alerts["active"] if a["kind"] != "orphan"]  # see the first test
    assert [(a["key"], a["severity"]) for a in active] == [("watchdog_kill:stuck", "error")]


async def test_event_loop_lag_is_measured_while_the_service_runs(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with serving(settings, []) as (service, client):
        runner = asyncio.create_task(service.run())
        try:
            samples = await _samples(client)
            while _value(samples, "event_loop_lag_seconds_count") == 0.0:
                await asyncio.sleep(0.2)  # the probe sleeps one second per measurement
                samples = await _samples(client)
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner

    assert _value(samples, "event_loop_lag_seconds_count") >= 1.0
    assert _value(samples, "event_loop_lag_last_seconds") >= 0.0


async def test_metric_names_and_label_sets_are_stable_and_documented(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, alerts=AlertSettings())
    async with (
        running_sim([_sim("gate", "127.0.60.7")]) as sim,
        serving(settings, [camera_for(sim, "gate")]) as (service, client),
    ):
        # Touch every labelled family once so that it has a sample with its labels.
        await service.patrols[SUBNET].run_cycle()
        service.metrics.kills.labels("SIGTERM", "deadline")
        service.metrics.slot_busy.labels("gate")
        text = (await client.get("/metrics")).text

    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue  # the client library's creation timestamps, read as gauges by the parser
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        found[family.name] = (family.type, tuple(sorted(labels)))
    assert found == EXPECTED_FAMILIES

    doc = (REPO / "README.md").read_text(encoding="utf-8")
    doc = doc.split("### Metrics", 1)[1].split("### Alerts", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| ([^|]*) \|", doc, flags=re.MULTILINE)
    documented = {
        _family(name, kind): (kind, tuple(sorted(re.findall(r"`(\w+)`", labels))))
        for name, kind, labels in rows
    }
    assert documented == EXPECTED_FAMILIES


def _family(name: str, kind: str) -> str:
    # The doc names counters as they are scraped (captures_total); the parser drops _total.
    return name.removesuffix("_total") if kind == "counter" else name
