"""The FastAPI app: a JSON API over a running Service, and the static dashboard."""

from __future__ import annotations

import asyncio
import collections
import logging
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from campatrol import __version__
from campatrol.cameras import mask_secrets
from campatrol.census import take_census
from campatrol.errors import CaptureBusy, CaptureError
from campatrol.web import observe
from campatrol.web.schemas import (
    CameraDetail,
    CameraSummary,
    CaptureInfo,
    CensusReport,
    CycleInfo,
    ErrorBody,
    FfmpegStatus,
    Healthz,
    PatrolInfo,
    ProcessInfo,
    SnapshotInfo,
    SystemStatus,
    to_utc,
)

if TYPE_CHECKING:
    from campatrol.cameras import Camera
    from campatrol.service import Service

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
RECENT_CAPTURES: Final = 20
MAX_RECENT_CAPTURES: Final = 500
CAMERA_STATUSES: Final = ("unknown", "online", "failing", "offline", "misconfigured", "disabled")

# The dashboard loads nothing from elsewhere, so the browser may refuse anything that tries.
DASHBOARD_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

ERROR_WORDS: Final = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "busy",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}

NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"model": ErrorBody}}

router = APIRouter()


def create_app(service: Service) -> FastAPI:
    """Return the HTTP app reading `service`; it neither starts nor stops the service."""
    app = FastAPI(
        title="campatrol",
        version=__version__,
        summary="Latest camera snapshots, patrol statistics and live child processes.",
        responses={422: {"model": ErrorBody}, 500: {"model": ErrorBody}},
    )
    app.state.service = service
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(router)
    app.include_router(observe.router)  # /metrics, /api/alerts
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated["Service", Depends(_service)]


# Errors: one body shape for every 4xx and 5xx, whoever raised it.


def _error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, message=message).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if status == 304:
        return Response(status_code=304, headers=exc.headers)
    phrase = HTTPStatus(status).phrase
    message = exc.detail if isinstance(exc.detail, str) else phrase
    if message == phrase and status in (404, 405):
        # Starlette's own answers for unknown routes and methods say only the phrase.
        message = f"{phrase.lower()}: {request.method} {request.url.path}"
    word = ERROR_WORDS.get(status, "internal" if status >= 500 else "bad_request")
    return _error_response(status, word, message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    # The offending input is left out on purpose: it may be anything a client sent.
    details = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", "")}
        for err in exc.errors()
    ]
    body = ErrorBody(error="invalid_request", message="the request is not valid", details=details)
    return JSONResponse(body.model_dump(), status_code=422)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this handler and uvicorn logs the traceback once; the client
    # gets no detail, since an unexpected message is the one place a secret could slip out.
    return _error_response(500, "internal", "internal server error")


def _camera_or_404(service: Service, camera_id: str) -> Camera:
    camera = service.cameras.get(camera_id)
    if camera is None:
        raise HTTPException(404, f"unknown camera {camera_id}")
    return camera


# Building response models from the service's objects.


def _snapshot_url(camera_id: str) -> str:
    return f"/api/cameras/{quote(camera_id, safe='')}/snapshot.jpg"


def _snapshot_info(camera_id: str, record: Any) -> SnapshotInfo:
    return SnapshotInfo(
        taken_at=record.taken_at,
        bytes=record.bytes,
        width=record.width,
        height=record.height,
        duration=record.duration,
        driver=record.driver,
        etag=record.etag,
        url=_snapshot_url(camera_id),
    )


def _camera_fields(service: Service, camera: Camera, snapshot: Any) -> dict[str, Any]:
    health = service.health(camera.id)
    secrets = camera.secrets()
    last_error = mask_secrets(health.last_error, secrets) if health.last_error else None
    return {
        "id": camera.id,
        "name": camera.name,
        "subnet": camera.subnet,
        "brand": camera.brand,
        "enabled": camera.enabled,
        "status": health.status,
        "consecutive_failures": health.consecutive_failures,
        "last_error_class": health.last_error_class,
        "last_error": last_error,
        "last_attempt_at": health.last_attempt_at,
        "last_success_at": health.last_success_at,
        "next_attempt_at": health.next_attempt_at,
        "sessions_in_use": service.slots.in_use(camera.id),
        "max_sessions": camera.max_sessions,
        "masked_url": camera.masked_url(),
        "last_snapshot": _snapshot_info(camera.id, snapshot) if snapshot else None,
    }


def _capture_info(camera: Camera, record: Any) -> CaptureInfo:
    message = record.message
    return CaptureInfo(
        started_at=record.started_at,
        duration=record.duration,
        outcome=record.outcome,
        message=mask_secrets(message, camera.secrets()) if message else None,
    )


def _latest_snapshots(service: Service, camera_ids: list[str]) -> dict[str, Any]:
    return {camera_id: service.store.latest_snapshot(camera_id) for camera_id in camera_ids}


# Conditional requests (RFC 9110, section 13.1).


def _etag_matches(if_none_match: str, etag: str) -> bool:
    # If-None-Match uses the weak comparison: W/"x" matches "x".
    if if_none_match.strip() == "*":
        return True
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag in candidates


def _not_modified(request: Request, etag: str, taken_at: datetime) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, etag)
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False  # an unparsable date is ignored, as the RFC asks
    if since.tzinfo is None:
        return False
    return taken_at.replace(microsecond=0) <= since


# Routes.


@router.get("/", include_in_schema=False)
async def dashboard() -> FileResponse:
    """Serve the dashboard page."""
    return FileResponse(STATIC_DIR / "index.html", headers=DASHBOARD_HEADERS)


@router.get("/healthz", response_model=Healthz)
async def healthz() -> Healthz:
    """Answer while the HTTP server is alive."""
    return Healthz()


@router.get("/api/cameras", response_model=list[CameraSummary])
async def list_cameras(service: ServiceDep) -> list[CameraSummary]:
    """List every configured camera with its health and latest snapshot."""
    cameras = sorted(service.cameras.values(), key=lambda camera: (camera.subnet, camera.id))
    snapshots = await asyncio.to_thread(_latest_snapshots, service, [c.id for c in cameras])
    return [CameraSummary(**_camera_fields(service, c, snapshots[c.id])) for c in cameras]


@router.get("/api/cameras/{camera_id}", response_model=CameraDetail, responses=NOT_FOUND)
async def get_camera(
    camera_id: str,
    service: ServiceDep,
    captures: Annotated[int, Query(ge=0, le=MAX_RECENT_CAPTURES)] = RECENT_CAPTURES,
) -> CameraDetail:
    """Return one camera with its health, latest snapshot and last `captures` attempts."""
    camera = _camera_or_404(service, camera_id)
    snapshot = await asyncio.to_thread(service.store.latest_snapshot, camera_id)
    recent = await asyncio.to_thread(service.store.recent_captures, camera_id, captures)
    return CameraDetail(
        **_camera_fields(service, camera, snapshot),
        recent_captures=[_capture_info(camera, record) for record in recent],
    )


@router.get(
    "/api/cameras/{camera_id}/snapshot.jpg",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the latest snapshot"},
        304: {"description": "the client's copy (If-None-Match) is current"},
        **NOT_FOUND,
    },
)
async def get_snapshot(camera_id: str, request: Request, service: ServiceDep) -> Response:
    """Serve a camera's latest JPEG with a strong ETag; 304 when the client has it."""
    _camera_or_404(service, camera_id)
    record = await asyncio.to_thread(service.store.latest_snapshot, camera_id)
    if record is None:
        raise HTTPException(404, f"camera {camera_id} has no snapshot yet")
    etag = f'"{record.etag}"'
    taken_at = to_utc(record.taken_at)
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(taken_at, usegmt=True),
        "Cache-Control": "no-cache",
    }
    if _not_modified(request, etag, taken_at):
        return Response(status_code=304, headers=headers)

    # The file is replaced by rename, so a read sees one whole image. If a newer image lands
    # between the metadata and the read, the client gets it under the older ETag and simply
    # fetches it again on its next poll, when the ETag differs.
    try:
        data = await asyncio.to_thread(Path(record.path).read_bytes)
    except FileNotFoundError:
        raise HTTPException(404, f"camera {camera_id} has no snapshot yet") from None
    return Response(data, media_type="image/jpeg", headers=headers)


@router.post(
    "/api/cameras/{camera_id}/capture",
    response_model=SnapshotInfo,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "no slot of the camera came free in time"},
        502: {"model": ErrorBody, "description": "the capture failed; `error` is its class"},
    },
)
async def capture_now(camera_id: str, service: ServiceDep) -> SnapshotInfo | JSONResponse:
    """Capture a snapshot now, inside the camera's slot budget, and return its metadata."""
    camera = _camera_or_404(service, camera_id)
    logger.debug("camera %s: capture requested over HTTP", camera_id)
    try:
        record = await service.capture_now(camera_id)
    except CaptureBusy as exc:
        return _error_response(409, "busy", mask_secrets(str(exc), camera.secrets()))
    except CaptureError as exc:
        message = mask_secrets(str(exc), camera.secrets())
        return _error_response(502, exc.failure_class, message)
    return _snapshot_info(camera_id, record)


@router.get("/api/patrols", response_model=list[PatrolInfo])
async def list_patrols(service: ServiceDep) -> list[PatrolInfo]:
    """List every subnet's patrol with its state and last cycle's statistics."""
    infos = []
    for subnet in sorted(service.patrols):
        patrol = service.patrols[subnet]
        cycle = patrol.last_cycle
        infos.append(
            PatrolInfo(
                subnet=patrol.subnet,
                state=patrol.state,
                camera_ids=list(patrol.camera_ids),
                current_camera_id=patrol.current_camera_id,
                cycle_number=patrol.cycle_number,
                next_cycle_at=patrol.next_cycle_at,
                last_cycle=None if cycle is None else _cycle_info(cycle),
            )
        )
    return infos


def _cycle_info(cycle: Any) -> CycleInfo:
    return CycleInfo(
        number=cycle.number,
        started_at=cycle.started_at,
        ended_at=cycle.ended_at,
        duration=cycle.duration,
        visited=cycle.visited,
        succeeded=cycle.succeeded,
        failed=cycle.failed,
        timed_out=cycle.timed_out,
        skipped=cycle.skipped,
        leaks=cycle.leaks,
    )


@router.get("/api/system/processes", response_model=list[ProcessInfo])
async def list_processes(service: ServiceDep) -> list[ProcessInfo]:
    """List the live child processes of the supervisor, argv masked."""
    return [
        ProcessInfo(
            pid=child.pid,
            camera_id=child.camera_id,
            purpose=child.purpose,
            started=child.started,
            deadline_at=child.deadline_at,
            masked_argv=list(child.masked_argv),
        )
        for child in service.supervisor.children()
    ]


@router.get("/api/system/status", response_model=SystemStatus)
async def system_status(service: ServiceDep) -> SystemStatus:
    """Return version, uptime, ffmpeg in use, and counts of cameras and children."""
    by_status = collections.Counter({status: 0 for status in CAMERA_STATUSES})
    for camera_id in service.cameras:
        by_status[service.health(camera_id).status] += 1
    started_at = to_utc(service.started_at)
    ffmpeg = service.ffmpeg
    ffmpeg_status = None
    if ffmpeg is not None:
        ffmpeg_status = FfmpegStatus(path=ffmpeg.path, version=ffmpeg.version, source=ffmpeg.source)
    return SystemStatus(
        version=__version__,
        started_at=started_at,
        uptime=max(0.0, (datetime.now(UTC) - started_at).total_seconds()),
        timezone=service.settings.timezone or None,
        ffmpeg=ffmpeg_status,
        cameras=len(service.cameras),
        cameras_by_status=dict(by_status),
        patrols=len(service.patrols),
        children=len(service.supervisor.children()),
    )


@router.get("/api/system/census", response_model=CensusReport)
async def system_census(service: ServiceDep) -> CensusReport:
    """Return the host-wide census of capture processes and RTSP connections, argv masked."""
    census = await asyncio.to_thread(take_census, list(service.cameras.values()))
    return CensusReport.model_validate(census.to_dict())
