"""Response models of the HTTP API; they are what /openapi.json documents."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer


def to_utc(value: datetime) -> datetime:
    """Return `value` in UTC; a naive datetime is taken to be UTC already."""
    # SQLite hands back naive datetimes; campatrol stores only UTC, so naive means UTC.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _validate_utc(value: object) -> object:
    return to_utc(value) if isinstance(value, datetime) else value


def _utc_isoformat(value: datetime) -> str:
    # Pydantic would write "Z"; the API promises an explicit "+00:00" offset.
    return value.astimezone(UTC).isoformat()


UtcDateTime = Annotated[
    datetime,
    BeforeValidator(_validate_utc),
    PlainSerializer(_utc_isoformat, return_type=str, when_used="json"),
]


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: str = Field(description="one word: not_found, busy, timeout, invalid_request, ...")
    message: str
    details: list[dict[str, object]] | None = Field(
        default=None, description="per-field problems of a request that failed validation"
    )


class Healthz(BaseModel):
    """Liveness of the HTTP server."""

    status: str = "ok"


class SnapshotInfo(BaseModel):
    """Metadata of one snapshot; the image itself is at `url`."""

    taken_at: UtcDateTime
    bytes: int
    width: int
    height: int
    duration: float = Field(description="seconds the capture took")
    driver: str
    etag: str = Field(description="the image's strong ETag value, without quotes")
    url: str


class CaptureInfo(BaseModel):
    """One recorded capture attempt of a camera."""

    started_at: UtcDateTime
    duration: float
    outcome: str = Field(description='"ok" or the failure class')
    message: str | None = Field(description="masked: never contains credentials")


class CameraSummary(BaseModel):
    """A camera with its health, as listed by GET /api/cameras."""

    id: str
    name: str
    subnet: str
    brand: str
    enabled: bool
    status: str = Field(description="unknown, online, failing, offline, misconfigured, disabled")
    consecutive_failures: int
    last_error_class: str | None
    last_error: str | None = Field(description="masked: never contains credentials")
    last_attempt_at: UtcDateTime | None
    last_success_at: UtcDateTime | None
    next_attempt_at: UtcDateTime | None
    sessions_in_use: int
    max_sessions: int
    masked_url: str
    last_snapshot: SnapshotInfo | None


class CameraDetail(CameraSummary):
    """A camera with its health and its most recent capture attempts."""

    recent_captures: list[CaptureInfo]


class CycleInfo(BaseModel):
    """Statistics of one finished cycle of a patrol."""

    number: int
    started_at: UtcDateTime
    ended_at: UtcDateTime
    duration: float
    visited: int
    succeeded: int
    failed: int
    timed_out: int
    skipped: int
    leaks: int


class PatrolInfo(BaseModel):
    """One subnet's patrol: what it does now and how its last cycle went."""

    subnet: str
    state: str = Field(description="starting, capturing or cooldown")
    camera_ids: list[str]
    current_camera_id: str | None
    cycle_number: int
    next_cycle_at: UtcDateTime | None
    last_cycle: CycleInfo | None


class ProcessInfo(BaseModel):
    """One live child process of the supervisor."""

    pid: int
    camera_id: str | None
    purpose: str
    started: UtcDateTime
    deadline_at: UtcDateTime | None
    masked_argv: list[str]


class FfmpegStatus(BaseModel):
    """The ffmpeg binary in use."""

    path: str
    version: str
    source: str


class SystemStatus(BaseModel):
    """Version, uptime and counts for the whole server."""

    version: str
    started_at: UtcDateTime
    uptime: float = Field(description="seconds since the service started")
    timezone: str | None = Field(description="IANA name of the display time zone")
    ffmpeg: FfmpegStatus | None = Field(description="null until the service has probed it")
    cameras: int
    cameras_by_status: dict[str, int]
    patrols: int
    children: int


class CensusProcessInfo(BaseModel):
    """One capture process on the host, whoever started it."""

    pid: int
    name: str
    user: str | None
    started: UtcDateTime
    age: float = Field(description="seconds since the process started")
    owner: str = Field(description="campatrol (owner alive), orphan (owner dead) or foreign")
    owner_pid: int | None = Field(description="pid named by the campatrol marker, if any")
    instance: str | None = Field(description="campatrol instance id named by the marker")
    camera: str | None = Field(description="host:port of the rtsp:// URL in its argv")
    connections: int = Field(description="its open TCP connections, when the kernel tells")
    argv: list[str] = Field(description="masked: never contains credentials")


class CensusCamera(BaseModel):
    """Processes and TCP connections the host holds against one camera endpoint."""

    camera: str = Field(description="host:port")
    host: str
    port: int
    camera_id: str | None = Field(description="the configured camera at this endpoint, if any")
    processes: int
    by_owner: dict[str, int]
    connections: int = Field(description="ESTABLISHED and SYN_SENT TCP connections to it")
    oldest: CensusProcessInfo | None
    pids: list[int]


class CensusTotals(BaseModel):
    """Counts over the whole census."""

    processes: int
    connections: int
    campatrol: int
    orphan: int
    foreign: int


class CensusReport(BaseModel):
    """The host-wide census, as `campatrol ps --json` prints it."""

    taken_at: UtcDateTime
    cameras: list[CensusCamera] = Field(description="sorted by processes, then connections")
    processes: list[CensusProcessInfo] = Field(description="oldest first")
    totals: CensusTotals
