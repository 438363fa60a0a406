"""Alerts: conditions an operator must see, each started once and cleared once.

An alert is keyed by its kind and subject (`offline:gate`, `leak:patrol:127.0.1.0/24`). State
alerts (too many children, a camera offline or busy) clear when their condition is no longer
true; event alerts (a leak, a watchdog kill, an orphan) clear `event_hold` seconds after their
last occurrence. Each start is logged once at WARNING or ERROR and each clear once at INFO,
however many cycles the condition lasts.

With a webhook URL configured, every start and clear is also POSTed as JSON. Notices go into a
bounded queue that one task (`deliver_forever`, owned by Service.run's TaskGroup) drains, so a
slow or dead receiver never holds up a patrol: when the queue is full, notices are dropped and
that is logged once.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from campatrol import __version__
from campatrol.config import AlertSettings

log = logging.getLogger(__name__)

# Kinds of alert, and whether each is a state (cleared by its condition) or an event (cleared
# by time).
CHILDREN_TOTAL: Final = "children_total"
CHILDREN_CAMERA: Final = "children_camera"
OFFLINE: Final = "offline"
BUSY: Final = "busy"
LEAK: Final = "leak"
WATCHDOG_KILL: Final = "watchdog_kill"
ORPHAN: Final = "orphan"
EVENT_KINDS: Final = frozenset({LEAK, WATCHDOG_KILL, ORPHAN})

WARNING: Final = "warning"
ERROR: Final = "error"

RECENT_LIMIT: Final = 100  # cleared alerts kept for GET /api/alerts
QUEUE_LIMIT: Final = 100  # webhook notices waiting to be sent


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Alert:
    """One alert; `cleared_at` is None while it is active."""

    kind: str
    subject: str
    severity: str  # "warning" or "error"
    message: str
    started_at: datetime
    last_seen_at: datetime
    occurrences: int = 1
    cleared_at: datetime | None = None

    @property
    def key(self) -> str:
        """The identity of the alert: kind and subject."""
        return f"{self.kind}:{self.subject}"

    def to_json(self) -> dict[str, Any]:
        """Return the alert as JSON-ready data, times in UTC ISO 8601 with offset."""
        return {
            "key": self.key,
            "kind": self.kind,
            "subject": self.subject,
            "severity": self.severity,
            "message": self.message,
            "started_at": self.started_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "occurrences": self.occurrences,
            "cleared_at": None if self.cleared_at is None else self.cleared_at.isoformat(),
        }


class Alerts:
    """The active and recently cleared alerts of one Service, and their webhook queue."""

    def __init__(self, settings: AlertSettings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self._clock = clock
        self._active: dict[str, Alert] = {}
        self._recent: collections.deque[Alert] = collections.deque(maxlen=RECENT_LIMIT)
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._dropping = False
        self.dropped = 0

    def active(self) -> list[Alert]:
        """Return the active alerts, oldest first."""
        return sorted(self._active.values(), key=lambda alert: alert.started_at)

    def recent(self) -> list[Alert]:
        """Return the recently cleared alerts, newest first."""
        return list(reversed(self._recent))

    def is_active(self, kind: str, subject: str) -> bool:
        """Whether the alert `kind:subject` is active."""
        return f"{kind}:{subject}" in self._active

    def update(self, kind: str, subject: str, condition: bool, message: str, severity: str) -> None:
        """Start the alert when `condition` holds and it is not active; clear it when not."""
        if condition:
            self.start(kind, subject, message, severity)
        else:
            self.clear(kind, subject)

    def start(self, kind: str, subject: str, message: str, severity: str) -> bool:
        """Start an alert, or note one more occurrence of an active one; True if it started."""
        now = self._clock()
        key = f"{kind}:{subject}"
        alert = self._active.get(key)
        if alert is not None:
            self._active[key] = replace(alert, last_seen_at=now, occurrences=alert.occurrences + 1)
            return False
        alert = Alert(kind, subject, severity, message, started_at=now, last_seen_at=now)
        self._active[key] = alert
        level = logging.ERROR if severity == ERROR else logging.WARNING
        log.log(level, "alert %s started: %s", key, message)
        self._notify("start", alert)
        return True

    def clear(self, kind: str, subject: str) -> bool:
        """Clear an active alert; True if it was active."""
        alert = self._active.pop(f"{kind}:{subject}", None)
        if alert is None:
            return False
        cleared = replace(alert, cleared_at=self._clock())
        self._recent.append(cleared)
        log.info("alert %s cleared after %s", cleared.key, _span(cleared))
        self._notify("clear", cleared)
        return True

    def expire_events(self) -> list[Alert]:
        """Clear event alerts whose last occurrence is more than `event_hold` seconds ago."""
        horizon = self._clock() - timedelta(seconds=self.settings.event_hold)
        stale = [
            a for a in self._active.values() if a.kind in EVENT_KINDS and a.last_seen_at <= horizon
        ]
        for alert in stale:
            self.clear(alert.kind, alert.subject)
        return stale

    async def deliver_forever(self) -> None:
        """POST queued notices to the webhook one by one until cancelled.

        Each POST is bounded by `webhook_timeout`; a failure is logged once per run of
        failures (at WARNING) and its recovery once (at INFO), and the notice is dropped.
        Returns at once when no webhook URL is configured.
        """
        url = self.settings.webhook_url
        if url is None:
            return
        timeout = self.settings.webhook_timeout
        where = _masked_url(url)
        # httpx logs each request's full URL at INFO; the URL may carry a token.
        guard = _UrlMask(url, where)
        httpx_log = logging.getLogger("httpx")
        httpx_log.addFilter(guard)
        # Limitation: proxies from the environment are not used (trust_env=False), so a webhook
        # that is reachable only through an HTTP proxy cannot be delivered to.
        try:
            async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
                await self._deliver(client, url, where)
        finally:
            httpx_log.removeFilter(guard)

    async def _deliver(self, client: httpx.AsyncClient, url: str, where: str) -> None:
        timeout = self.settings.webhook_timeout
        failing = False
        while True:
            notice = await self._outbox.get()
            if self._dropping and self._outbox.empty():
                self._dropping = False
            try:
                async with asyncio.timeout(timeout):
                    response = await client.post(url, json=notice)
                response.raise_for_status()
            except (httpx.HTTPError, TimeoutError) as exc:
                if not failing:
                    log.warning("alert webhook %s: delivery failed: %s", where, _reason(exc))
                failing = True
                continue
            if failing:
                log.info("alert webhook %s: delivering again", where)
                failing = False

    def _notify(self, event: str, alert: Alert) -> None:
        if self.settings.webhook_url is None:
            return
        notice = {"event": event, "alert": alert.to_json(), "version": __version__}
        try:
            self._outbox.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._dropping:
                log.warning("alert webhook: queue full (%d); dropping notices", QUEUE_LIMIT)
                self._dropping = True


class _UrlMask(logging.Filter):
    """Replaces one URL by its masked form in the records of the logger it is added to."""

    def __init__(self, url: str, masked: str) -> None:
        super().__init__()
        self._url = url
        self._masked = masked

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._url in message:
            record.msg, record.args = message.replace(self._url, self._masked), None
        return True


def _span(alert: Alert) -> str:
    seconds = ((alert.cleared_at or alert.last_seen_at) - alert.started_at).total_seconds()
    return f"{seconds:.0f}s"


def _masked_url(url: str) -> str:
    # A webhook URL often carries a token in its path, query or userinfo: show only its origin.
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    # httpx's messages name the URL for some errors; the class name alone carries no secret.
    return type(exc).__name__
