"""HTTP API and dashboard: response shapes, conditional snapshots, errors, no credentials."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from PIL import Image

from campatrol.cameras import Camera
from campatrol.errors import CaptureBusy, CaptureError, CaptureTimeout
from campatrol.web import create_app

pytestmark = pytest.mark.timeout(30)

PASSWORD = "Zq9@swordfish:/#%?&+ é"
YARD_PASSWORD = "yard lock/ü?"
T0 = datetime(2026, 12, 4, 15, 2, 11, 123456, tzinfo=UTC)


# A stand-in Service for the HTTP layer's own rules (error shapes, ETag/304, masking, time
# formats). It has exactly the attributes the web layer reads (docs/architecture.md,
# "service.py"); the Camera objects under it are real. It is kept because it sets states the
# real service reaches only slowly or by chance (naive store times, a failed cycle, one capture
# failure of each class); the tests at the end of this file use the real Service over the
# simulator and real ffmpeg for the paths a user takes.


@dataclass
class StandInStore:
    snapshots: dict[str, Any] = field(default_factory=dict)
    captures: dict[str, list[Any]] = field(default_factory=dict)

    def latest_snapshot(self, camera_id: str) -> Any:
        return self.snapshots.get(camera_id)

    def recent_captures(self, camera_id: str, limit: int) -> list[Any]:
        return self.captures.get(camera_id, [])[:limit]


@dataclass
class StandInService:
    settings: Any
    cameras: dict[str, Camera]
    store: StandInStore
    health_by_id: dict[str, Any]
    children: list[Any] = field(default_factory=list)
    patrols: dict[str, Any] = field(default_factory=dict)
    capture_results: dict[str, Any] = field(default_factory=dict)
    started_at: datetime = T0
    ffmpeg: Any = field(
        default_factory=lambda: SimpleNamespace(
            path="/usr/bin/ffmpeg", version="5.1.6", source="path"
        )
    )

    def __post_init__(self) -> None:
        self.supervisor = SimpleNamespace(children=lambda: list(self.children))
        self.slots = SimpleNamespace(in_use=lambda camera_id: 1 if camera_id == "gate" else 0)

    def health(self, camera_id: str) -> Any:
        return self.health_by_id[camera_id]

    async def capture_now(self, camera_id: str) -> Any:
        self.cameras[camera_id]
        result = self.capture_results[camera_id]
        if isinstance(result, BaseException):
            raise result
        return result


def _health(status: str = "online", **changes: Any) -> SimpleNamespace:
    fields = {
        "status": status,
        "consecutive_failures": 0,
        "last_error_class": None,
        "last_error": None,
        "last_attempt_at": T0,
        "last_success_at": T0,
        "next_attempt_at": None,
    }
    fields.update(changes)
    return SimpleNamespace(**fields)


def _write_jpeg(path: Path, color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _snapshot(path: Path, etag: str, taken_at: datetime = T0) -> SimpleNamespace:
    return SimpleNamespace(
        taken_at=taken_at,
        path=path,
        bytes=path.stat().st_size,
        width=64,
        height=48,
        duration=0.42,
        driver="ffmpeg",
        etag=etag,
    )


@pytest.fixture
def service(tmp_path: Path) -> StandInService:
    cameras = [
        Camera(
            id="gate",
            name="Gate",
            host="127.0.1.10",
            path="/stream1",
            brand="tapo",
            username="admin",
            password=PASSWORD,
        ),
        Camera(
            id="yard",
            name="Yard <b>&amp;",
            host="127.0.1.11",
            path="/stream2",
            brand="tapo",
            username="viewer",
            password=YARD_PASSWORD,
        ),
        Camera(id="shed", name="Shed", host="127.0.2.10", brand="hikvision", enabled=False),
    ]
    gate_jpeg = tmp_path / "snapshots" / "gate" / "latest.jpg"
    _write_jpeg(gate_jpeg, "red")
    store = StandInStore(
        snapshots={"gate": _snapshot(gate_jpeg, "sha-gate-1")},
        captures={
            "gate": [
                SimpleNamespace(started_at=T0, duration=0.42, outcome="ok", message=None),
                SimpleNamespace(
                    started_at=T0 - timedelta(minutes=1),
                    duration=2.0,
                    outcome="unauthorized",
                    # A driver that forgot to mask: the web layer must still not show it.
                    message=f"401 from rtsp://admin:{PASSWORD}@127.0.1.10:554/stream1",
                ),
            ]
        },
    )
    health = {
        "gate": _health(),
        "yard": _health(
            "failing",
            consecutive_failures=3,
            last_error_class="timeout",
            # Masked by the service already; the web layer masks again, in case one was missed.
            last_error=f"no frame within 2.0s from rtsp://viewer:{YARD_PASSWORD}@127.0.1.11:554/",
            last_success_at=None,
            next_attempt_at=T0 + timedelta(seconds=40),
        ),
        "shed": _health("disabled", last_attempt_at=None, last_success_at=None),
    }
    cycle = SimpleNamespace(
        subnet="127.0.1.0/24",
        number=7,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=12.4),
        duration=12.4,
        visited=2,
        succeeded=1,
        failed=1,
        timed_out=1,
        skipped=0,
        leaks=0,
    )
    patrols = {
        "127.0.1.0/24": SimpleNamespace(
            subnet="127.0.1.0/24",
            camera_ids=["gate", "yard"],
            state="cooldown",
            current_camera_id=None,
            cycle_number=7,
            last_cycle=cycle,
            next_cycle_at=T0 + timedelta(seconds=30),
        )
    }
    children = [
        SimpleNamespace(
            pid=4242,
            camera_id="gate",
            purpose="patrol:127.0.1.0/24",
            started=T0,
            deadline_at=T0 + timedelta(seconds=10),
            masked_argv=["ffmpeg", "-i", cameras[0].masked_url()],
            instance_id="abc",
        )
    ]
    return StandInService(
        settings=SimpleNamespace(timezone="Europe/Berlin", port=8080),
        cameras={c.id: c for c in cameras},
        store=store,
        health_by_id=health,
        children=children,
        patrols=patrols,
    )


@pytest.fixture
async def client(service: StandInService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# Cameras.


async def test_healthz_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_camera_list_reports_health_sessions_and_latest_snapshot(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/cameras")

    assert response.status_code == 200
    cameras = {camera["id"]: camera for camera in response.json()}
    assert list(cameras) == ["gate", "yard", "shed"]  # by subnet, then id
    gate = cameras["gate"]
    assert gate["status"] == "online"
    assert gate["subnet"] == "127.0.1.0/24"
    assert gate["sessions_in_use"] == 1
    assert gate["max_sessions"] == 2
    assert gate["masked_url"] == "rtsp://***:***@127.0.1.10:554/stream1"
    assert gate["last_snapshot"] == {
        "taken_at": "2026-12-04T15:02:11.123456+00:00",
        "bytes": gate["last_snapshot"]["bytes"],
        "width": 64,
        "height": 48,
        "duration": 0.42,
        "driver": "ffmpeg",
        "etag": "sha-gate-1",
        "url": "/api/cameras/gate/snapshot.jpg",
    }
    assert cameras["yard"]["last_snapshot"] is None
    assert cameras["yard"]["status"] == "failing"
    assert cameras["yard"]["last_error_class"] == "timeout"
    assert cameras["yard"]["next_attempt_at"] == "2026-12-04T15:02:51.123456+00:00"
    assert cameras["shed"]["enabled"] is False


async def test_camera_detail_lists_recent_captures_newest_first(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/cameras/gate")

    assert response.status_code == 200
    captures = response.json()["recent_captures"]
    assert [c["outcome"] for c in captures] == ["ok", "unauthorized"]
    assert captures[0]["started_at"] == "2026-12-04T15:02:11.123456+00:00"
    assert captures[1]["message"] == "401 from rtsp://***:***@127.0.1.10:554/stream1"


async def test_camera_detail_limits_recent_captures_to_the_query(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/cameras/gate", params={"captures": 1})

    assert [c["outcome"] for c in response.json()["recent_captures"]] == ["ok"]


async def test_naive_times_from_the_store_are_served_as_utc(
    client: httpx.AsyncClient, service: StandInService
) -> None:
    # SQLite drops the offset; the store keeps UTC, and the API must say so explicitly.
    service.store.snapshots["gate"].taken_at = T0.replace(tzinfo=None)

    response = await client.get("/api/cameras/gate")

    assert response.json()["last_snapshot"]["taken_at"] == "2026-12-04T15:02:11.123456+00:00"


# Snapshots.


async def test_snapshot_is_served_with_strong_etag_and_last_modified(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    response = await client.get("/api/cameras/gate/snapshot.jpg")

    assert response.status_code == 200
    assert response.content == (tmp_path / "snapshots" / "gate" / "latest.jpg").read_bytes()
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["etag"] == '"sha-gate-1"'
    assert response.headers["last-modified"] == "Fri, 04 Dec 2026 15:02:11 GMT"
    assert response.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "if_none_match",
    [
        pytest.param('"sha-gate-1"', id="exact"),
        pytest.param('W/"sha-gate-1"', id="weak"),
        pytest.param('"other", "sha-gate-1"', id="list"),
        pytest.param("*", id="star"),
    ],
)
async def test_snapshot_matching_if_none_match_is_304_without_body(
    client: httpx.AsyncClient, if_none_match: str
) -> None:
    response = await client.get(
        "/api/cameras/gate/snapshot.jpg", headers={"If-None-Match": if_none_match}
    )

    assert response.status_code == 304
    assert response.content == b""
    assert response.headers["etag"] == '"sha-gate-1"'


async def test_snapshot_with_stale_etag_returns_the_new_image(
    client: httpx.AsyncClient, service: StandInService, tmp_path: Path
) -> None:
    new_jpeg = _write_jpeg(tmp_path / "snapshots" / "gate" / "latest.jpg", "blue")
    service.store.snapshots["gate"] = _snapshot(
        tmp_path / "snapshots" / "gate" / "latest.jpg", "sha-gate-2", T0 + timedelta(seconds=30)
    )

    response = await client.get(
        "/api/cameras/gate/snapshot.jpg", headers={"If-None-Match": '"sha-gate-1"'}
    )

    assert response.status_code == 200
    assert response.content == new_jpeg
    assert response.headers["etag"] == '"sha-gate-2"'


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        pytest.param("Fri, 04 Dec 2026 15:02:11 GMT", 304, id="same-second"),
        pytest.param("Fri, 04 Dec 2026 15:02:10 GMT", 200, id="older"),
        pytest.param("not a date", 200, id="garbage"),
    ],
)
async def test_snapshot_if_modified_since_without_etag(
    client: httpx.AsyncClient, since: str, expected: int
) -> None:
    response = await client.get(
        "/api/cameras/gate/snapshot.jpg", headers={"If-Modified-Since": since}
    )

    assert response.status_code == expected


async def test_snapshot_not_taken_yet_is_404_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/cameras/yard/snapshot.jpg")

    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "message": "camera yard has no snapshot yet",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/cameras/nope", id="detail"),
        pytest.param("GET", "/api/cameras/nope/snapshot.jpg", id="snapshot"),
        pytest.param("POST", "/api/cameras/nope/capture", id="capture"),
    ],
)
async def test_unknown_camera_is_404_json(client: httpx.AsyncClient, method: str, path: str):
    response = await client.request(method, path)

    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "message": "unknown camera nope"}


# Capture now.


async def test_capture_now_returns_the_new_snapshot_metadata(
    client: httpx.AsyncClient, service: StandInService, tmp_path: Path
) -> None:
    service.capture_results["gate"] = _snapshot(
        tmp_path / "snapshots" / "gate" / "latest.jpg", "sha-gate-3", T0 + timedelta(minutes=5)
    )

    response = await client.post("/api/cameras/gate/capture")

    assert response.status_code == 200
    body = response.json()
    assert body["etag"] == "sha-gate-3"
    assert body["taken_at"] == "2026-12-04T15:07:11.123456+00:00"
    assert body["url"] == "/api/cameras/gate/snapshot.jpg"


@pytest.mark.parametrize(
    ("error", "status", "word"),
    [
        pytest.param(CaptureBusy("camera gate: no free slot within 5.0s"), 409, "busy", id="busy"),
        pytest.param(
            CaptureTimeout("camera gate: no frame within 2.0s"), 502, "timeout", id="timeout"
        ),
        pytest.param(CaptureError("camera gate: garbage"), 502, "protocol", id="protocol"),
    ],
)
async def test_capture_now_failure_maps_to_status_and_class(
    client: httpx.AsyncClient, service: StandInService, error: Exception, status: int, word: str
) -> None:
    service.capture_results["gate"] = error

    response = await client.post("/api/cameras/gate/capture")

    assert response.status_code == status
    assert response.json() == {"error": word, "message": str(error)}


# Patrols and system.


async def test_patrols_report_state_and_last_cycle(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/patrols")

    assert response.status_code == 200
    assert response.json() == [
        {
            "subnet": "127.0.1.0/24",
            "state": "cooldown",
            "camera_ids": ["gate", "yard"],
            "current_camera_id": None,
            "cycle_number": 7,
            "next_cycle_at": "2026-12-04T15:02:41.123456+00:00",
            "last_cycle": {
                "number": 7,
                "started_at": "2026-12-04T15:02:11.123456+00:00",
                "ended_at": "2026-12-04T15:02:23.523456+00:00",
                "duration": 12.4,
                "visited": 2,
                "succeeded": 1,
                "failed": 1,
                "timed_out": 1,
                "skipped": 0,
                "leaks": 0,
            },
        }
    ]


async def test_processes_list_live_children_with_masked_argv(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/system/processes")

    assert response.json() == [
        {
            "pid": 4242,
            "camera_id": "gate",
            "purpose": "patrol:127.0.1.0/24",
            "started": "2026-12-04T15:02:11.123456+00:00",
            "deadline_at": "2026-12-04T15:02:21.123456+00:00",
            "masked_argv": ["ffmpeg", "-i", "rtsp://***:***@127.0.1.10:554/stream1"],
        }
    ]


async def test_status_counts_cameras_by_status_and_names_the_zone(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/system/status")

    body = response.json()
    assert body["timezone"] == "Europe/Berlin"
    assert body["ffmpeg"] == {"path": "/usr/bin/ffmpeg", "version": "5.1.6", "source": "path"}
    assert body["cameras"] == 3
    assert body["cameras_by_status"] == {
        "unknown": 0,
        "online": 1,
        "failing": 1,
        "offline": 0,
        "misconfigured": 0,
        "disabled": 1,
    }
    assert body["patrols"] == 1
    assert body["children"] == 1
    assert body["started_at"] == "2026-12-04T15:02:11.123456+00:00"
    assert body["uptime"] > 0


# Errors and documentation.


@pytest.mark.parametrize(
    ("method", "path", "status", "word"),
    [
        pytest.param("GET", "/no/such/route", 404, "not_found", id="unknown-route"),
        pytest.param("GET", "/static/missing.js", 404, "not_found", id="unknown-static"),
        pytest.param("DELETE", "/api/cameras", 405, "method_not_allowed", id="wrong-method"),
        pytest.param(
            "GET", "/api/cameras/gate?captures=-1", 422, "invalid_request", id="invalid-query"
        ),
    ],
)
async def test_every_error_has_the_same_json_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, word: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == status
    body = response.json()
    assert body["error"] == word
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"error", "message", "details"}


async def test_unexpected_error_is_500_json_without_detail(service: StandInService) -> None:
    def broken_health(camera_id: str) -> Any:
        raise RuntimeError(f"health table corrupt near {PASSWORD}")

    service.health = broken_health  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=create_app(service), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/api/cameras")

    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal server error"}


async def test_validation_error_names_the_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/cameras/gate", params={"captures": "many"})

    assert response.status_code == 422
    assert response.json()["details"][0]["loc"] == ["query", "captures"]


async def test_openapi_documents_the_response_models(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")

    spec = response.json()
    schemas = spec["components"]["schemas"]
    for name in (
        "CameraSummary",
        "CameraDetail",
        "SnapshotInfo",
        "PatrolInfo",
        "ProcessInfo",
        "SystemStatus",
        "ErrorBody",
    ):
        assert name in schemas
    capture = spec["paths"]["/api/cameras/{camera_id}/capture"]["post"]["responses"]
    assert set(capture) >= {"200", "404", "409", "502"}


async def test_no_response_contains_a_credential(
    client: httpx.AsyncClient, service: StandInService
) -> None:
    gate, yard = service.cameras["gate"], service.cameras["yard"]
    service.capture_results["gate"] = CaptureError(f"camera said no to {gate.rtsp_url()}")
    paths = [
        "/api/cameras",
        "/api/cameras/gate",
        "/api/cameras/yard",
        "/api/patrols",
        "/api/system/processes",
        "/api/system/status",
        "/openapi.json",
        "/",
    ]
    bodies = [(await client.get(path)).text for path in paths]
    bodies.append((await client.post("/api/cameras/gate/capture")).text)

    # JSON escapes non-ASCII; compare against the decoded text as well as the raw bytes.
    texts = bodies + [json.dumps(json.loads(b)) for b in bodies if b.startswith(("[", "{"))]
    for secret in (*gate.secrets(), *yard.secrets(), "swordfish", "yard lock"):
        for text in texts:
            assert secret not in text


# Dashboard.


async def test_dashboard_page_and_assets_ship_in_the_package(client: httpx.AsyncClient) -> None:
    page = await client.get("/")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        response = await client.get(asset)
        assert response.status_code == 200, asset
    assert {"/static/app.js", "/static/style.css"} <= set(
        re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    )


def test_dashboard_loads_nothing_from_elsewhere_and_never_parses_data_as_html() -> None:
    static = Path(__file__).parents[1] / "src" / "campatrol" / "web" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import|url\(", text), path.name
    script = (static / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)


# A small harness that runs the dashboard's own time helpers under node, without a browser.
_NODE_HARNESS = """
const src = require("fs").readFileSync(process.argv[1], "utf8");
eval(src.slice(src.indexOf("const pad"), src.indexOf("// DOM helpers.")) + `
  const out = JSON.parse(process.argv[2]).map(([iso, zone]) => formatInZone(parseTime(iso), zone));
  const t = parseTime("2026-12-04T15:02:11.123456+00:00");
  out.push(formatAge(t, t.getTime() + 12400), formatDuration(12.4), formatDuration(3725));
  console.log(JSON.stringify(out));
`);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the dashboard's JS")
def test_dashboard_shows_times_in_the_display_zone_with_offset() -> None:
    script = Path(__file__).parents[1] / "src" / "campatrol" / "web" / "static" / "app.js"
    cases = [
        ["2026-12-04T15:02:11.123456+00:00", "Europe/Berlin"],
        ["2026-07-01T00:30:00+00:00", "America/New_York"],
        ["2026-12-04T15:02:11+00:00", "America/St_Johns"],
        ["2026-12-04T15:02:11+00:00", "UTC"],
    ]

    result = subprocess.run(
        ["node", "-e", _NODE_HARNESS, str(script), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )

    assert json.loads(result.stdout) == [
        "2026-12-04 16:02:11 +01:00",
        "2026-06-30 20:30:00 -04:00",
        "2026-12-04 11:32:11 -03:30",
        "2026-12-04 15:02:11 +00:00",
        "12 s ago",
        "00:12",
        "1:02:05",
    ]


# The real Service, over the simulator and real ffmpeg.


def _sim_camera(camera_id: str, host: str, **overrides: Any) -> Any:
    from campatrol.sim import SimCameraConfig

    values: dict[str, Any] = {"id": camera_id, "host": host, "port": 0, "width": 320}
    values.update({"height": 180, "fps": 15, "gop": 15, **overrides})
    return SimCameraConfig(**values)


@pytest.mark.timeout(60)
async def test_service_capture_is_served_as_a_fresh_snapshot_without_credentials(
    tmp_path: Path,
) -> None:
    from campatrol.config import Settings
    from simhelpers import camera_for, running_sim, serving

    sims = [
        _sim_camera("gate", "127.0.1.31", auth="digest", username="admin", password=PASSWORD),
        _sim_camera("yard", "127.0.1.32", auth="digest", username="viewer", password="right"),
    ]
    settings = Settings(data_dir=tmp_path, timezone="Europe/Berlin")
    async with running_sim(sims) as sim:
        gate = camera_for(sim, "gate", username="admin", password=PASSWORD)
        yard = camera_for(sim, "yard", username="viewer", password=YARD_PASSWORD)
        async with serving(settings, [gate, yard]) as (service, client):
            before = await client.get("/api/cameras/gate/snapshot.jpg")
            await service.patrols["127.0.1.0/24"].run_cycle()
            patrols = (await client.get("/api/patrols")).json()
            captured = await client.post("/api/cameras/gate/capture")
            image = await client.get("/api/cameras/gate/snapshot.jpg")
            again = await client.get(
                "/api/cameras/gate/snapshot.jpg", headers={"If-None-Match": image.headers["etag"]}
            )
            refused = await client.post("/api/cameras/yard/capture")
            bodies = [
                (await client.get(path)).text
                for path in (
                    "/api/cameras",
                    "/api/cameras/gate",
                    "/api/cameras/yard",
                    "/api/patrols",
                    "/api/system/processes",
                    "/api/system/status",
                )
            ]

    assert before.status_code == 404
    assert patrols[0]["cycle_number"] == 1
    assert patrols[0]["camera_ids"] == ["gate", "yard"]
    cycle = patrols[0]["last_cycle"]
    assert (cycle["visited"], cycle["succeeded"], cycle["failed"], cycle["leaks"]) == (2, 1, 1, 0)
    assert captured.status_code == 200, captured.text
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).size == (320, 180)
    assert image.headers["etag"] == f'"{hashlib.sha256(image.content).hexdigest()}"'
    assert image.headers["etag"] == f'"{captured.json()["etag"]}"'
    assert again.status_code == 304
    assert refused.status_code == 502
    assert refused.json()["error"] == "unauthorized"

    cameras = {c["id"]: c for c in json.loads(bodies[0])}
    assert cameras["gate"]["status"] == "online"
    assert cameras["gate"]["last_snapshot"]["etag"] == captured.json()["etag"]
    assert cameras["yard"]["last_error_class"] == "unauthorized"
    assert [c["outcome"] for c in json.loads(bodies[1])["recent_captures"]] == ["ok", "ok"]
    yard_captures = json.loads(bodies[2])["recent_captures"]
    assert [c["outcome"] for c in yard_captures] == ["unauthorized", "unauthorized"]
    assert json.loads(bodies[4]) == []
    assert json.loads(bodies[5])["cameras_by_status"]["online"] == 1
    texts = [*bodies, refused.text, captured.text]
    for secret in (*gate.secrets(), *yard.secrets(), "swordfish", "yard lock"):
        for text in texts:
            assert secret not in text


@pytest.mark.timeout(60)
async def test_service_capture_while_the_only_slot_hangs_is_409_and_listed_as_a_process(
    tmp_path: Path,
) -> None:
    from campatrol.config import Settings
    from simhelpers import camera_for, running_sim, serving

    settings = Settings(data_dir=tmp_path, slot_wait=0.2)
    sims = [_sim_camera("stuck", "127.0.1.33", fault="hang_after_accept", max_sessions=1)]
    async with running_sim(sims) as sim:
        stuck = camera_for(sim, "stuck", max_sessions=1, deadline=20.0)
        async with serving(settings, [stuck]) as (_, client), asyncio.TaskGroup() as tg:
            hanging = tg.create_task(client.post("/api/cameras/stuck/capture"))
            processes: list[dict[str, Any]] = []
            while not processes:
                await asyncio.sleep(0.05)  # racy by nature: waits for the spawn to register
                processes = (await client.get("/api/system/processes")).json()
            busy = await client.post("/api/cameras/stuck/capture")
            detail = (await client.get("/api/cameras/stuck")).json()
            hanging.cancel()

    assert busy.status_code == 409
    assert busy.json()["error"] == "busy"
    assert [(p["camera_id"], p["purpose"]) for p in processes] == [("stuck", "manual")]
    assert "rtsp://127.0.1.33" in " ".join(processes[0]["masked_argv"])
    assert detail["sessions_in_use"] == 1
