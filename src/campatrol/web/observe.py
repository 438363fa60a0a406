"""Routes for operators' tools: Prometheus metrics and the alert list."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from campatrol.service import Service

router = APIRouter()


class AlertInfo(BaseModel):
    """One alert; times are UTC ISO 8601 with an explicit offset."""

    key: str = Field(description="kind and subject, e.g. offline:gate")
    kind: str = Field(
        description="children_total, children_camera, offline, busy, leak, watchdog_kill, orphan"
    )
    subject: str = Field(description="a camera id, a subnet, 'all' or 'host'")
    severity: str = Field(description="warning or error")
    message: str
    started_at: str
    last_seen_at: str
    occurrences: int = Field(description="how often the condition was seen while active")
    cleared_at: str | None = Field(description="null while the alert is active")


class AlertList(BaseModel):
    """The active alerts (oldest first) and the recently cleared ones (newest first)."""

    active: list[AlertInfo]
    recent: list[AlertInfo]


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Serve the service's metrics in the Prometheus text format."""
    body = _service(request).metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/alerts", response_model=AlertList)
async def list_alerts(request: Request) -> AlertList:
    """List the active alerts and the recently cleared ones."""
    alerts = _service(request).alerts
    return AlertList(
        active=[AlertInfo(**alert.to_json()) for alert in alerts.active()],
        recent=[AlertInfo(**alert.to_json()) for alert in alerts.recent()],
    )
