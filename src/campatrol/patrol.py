"""Subnet patrols: cycles over a subnet's cameras, cooldown, per-camera health and backoff."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

from campatrol.cameras import Camera
from campatrol.errors import CaptureError, CaptureInternalError

log = logging.getLogger(__name__)

# A camera's status, from the patrol's point of view.
UNKNOWN: Final = "unknown"
ONLINE: Final = "online"
FAILING: Final = "failing"
OFFLINE: Final = "offline"
MISCONFIGURED: Final = "misconfigured"
DISABLED: Final = "disabled"


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class HealthSettings(Protocol):
    """The settings the health rules read (campatrol.config.Settings has them all)."""

    interval: float
    failing_after: int
    offline_after: int
    backoff_base: float | None
    backoff_max: float
    unauthorized_backoff: float


@dataclass
class CameraHealth:
    """What the patrol knows about one camera: its status and when to try it next."""

    status: str = UNKNOWN
    consecutive_failures: int = 0
    last_error_class: str | None = None
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    last_success_at: datetime | None = None
    next_attempt_at: datetime | None = None

    def due(self, now: datetime) -> bool:
        """Whether the patrol should visit the camera now (False while backing off)."""
        if self.status in (MISCONFIGURED, DISABLED):
            return False
        return self.next_attempt_at is None or now >= self.next_attempt_at

    def record_success(self, now: datetime) -> None:
        """Mark the camera online and forget its failures."""
        self.status = ONLINE
        self.consecutive_failures = 0
        self.last_error_class = None
        self.last_error = None
        self.last_attempt_at = now
        self.last_success_at = now
        self.next_attempt_at = None

    def record_failure(
        self, now: datetime, error: CaptureError, settings: HealthSettings, rng: random.Random
    ) -> None:
        """Count a failure, update the status and schedule the next attempt (backoff)."""
        self.last_attempt_at = now
        self.last_error_class = error.failure_class
        self.last_error = str(error)
        if error.failure_class == "config":
            # An option error repeats identically on every attempt: report it once and stop
            # asking; the camera is not offline, its configuration is wrong.
            self.status = MISCONFIGURED
            self.next_attempt_at = None
            return
        self.consecutive_failures += 1
        n = self.consecutive_failures
        if n >= settings.offline_after:
            self.status = OFFLINE
        elif n >= settings.failing_after:
            self.status = FAILING
        delay = backoff_delay(n, error, settings, rng)
        # No delay: the camera is simply visited again in the next cycle.
        self.next_attempt_at = now + timedelta(seconds=delay) if delay > 0 else None


def backoff_delay(
    failures: int, error: CaptureError, settings: HealthSettings, rng: random.Random
) -> float:
    """Seconds until a camera with `failures` consecutive failures is tried again.

    The first failure is retried on the next cycle; the second waits `backoff_base` (default:
    the patrol interval, i.e. one cycle is skipped) and each further one doubles it, up to
    `backoff_max`, with ±20% jitter so cameras that failed together do not return together.
    A camera that rejected the credentials waits `unauthorized_backoff`: cameras lock an
    account or address out after repeated failed logins (Tapo and Hikvision for ~30 minutes),
    and a retry inside that window would only renew the lockout.
    """
    if error.failure_class == "unauthorized":
        return settings.unauthorized_backoff * rng.uniform(1.0, 1.2)
    if failures <= 1:
        return 0.0
    first = settings.backoff_base or settings.interval
    base = min(settings.backoff_max, first * 2 ** (failures - 2))
    return base * rng.uniform(0.8, 1.2)


@dataclass(frozen=True)
class CycleStats:
    """The statistics of one finished cycle of a patrol."""

    subnet: str
    number: int
    started_at: datetime
    ended_at: datetime
    duration: float
    visited: int
    succeeded: int
    failed: int
    timed_out: int
    skipped: int
    leaks: int


@dataclass(frozen=True)
class CaptureOutcome:
    """How one visit to a camera ended: `error` is None on success."""

    camera_id: str
    error: CaptureError | None = None


class CycleSettings(Protocol):
    """The settings a patrol reads."""

    interval: float
    cooldown: float
    subnet_concurrency: int


Visit = Callable[[Camera, str], Awaitable[CaptureOutcome]]
LeakCheck = Callable[[str], Awaitable[int]]
CycleSink = Callable[[CycleStats], Awaitable[None]]


@dataclass
class Patrol:
    """The endless loop over one subnet: cycle, cooldown, cycle, …"""

    subnet: str
    cameras: Sequence[Camera]
    settings: CycleSettings
    visit: Visit
    is_due: Callable[[Camera], bool]
    end_leftovers: LeakCheck
    record_cycle: CycleSink
    state: str = "starting"
    current_camera_ids: set[str] = field(default_factory=set)
    cycle_number: int = 0
    last_cycle: CycleStats | None = None
    next_cycle_at: datetime | None = None

    @property
    def purpose(self) -> str:
        """The supervisor purpose tag of this patrol's captures."""
        return f"patrol:{self.subnet}"

    @property
    def camera_ids(self) -> list[str]:
        """The ids of the patrolled cameras, in visiting order."""
        return [camera.id for camera in self.cameras]

    @property
    def current_camera_id(self) -> str | None:
        """One camera being captured right now, if any."""
        return min(self.current_camera_ids) if self.current_camera_ids else None

    async def run(self) -> None:
        """Run cycles until cancelled; the cooldown keeps cycle starts `interval` apart.

        Cancellation ends the current cycle: its captures are cancelled, which kills and reaps
        their processes before this returns.
        """
        while True:
            started = time.monotonic()
            stats = await self.run_cycle()
            wait = max(
                self.settings.interval - (time.monotonic() - started), self.settings.cooldown
            )
            self.state = "cooldown"
            self.next_cycle_at = stats.ended_at + timedelta(seconds=wait)
            await asyncio.sleep(wait)

    async def run_cycle(self) -> CycleStats:
        """Visit every due camera once, then end any leftover child process as a leak."""
        self.cycle_number += 1
        self.state = "capturing"
        self.next_cycle_at = None
        started_at = utcnow()
        t0 = time.monotonic()
        outcomes: list[CaptureOutcome] = []
        skipped = 0
        gate = asyncio.Semaphore(max(1, self.settings.subnet_concurrency))

        async def visit_one(camera: Camera) -> None:
            async with gate:
                self.current_camera_ids.add(camera.id)
                try:
                    outcomes.append(await self.visit(camera, self.purpose))
                except Exception as exc:
                    # A bug met while visiting one camera must not end the cycle for the others
                    # (nor the patrol): log it with its traceback and count the visit as failed.
                    log.exception("camera %s: unexpected error during the patrol visit", camera.id)
                    error = CaptureInternalError(f"camera {camera.id}: unexpected error: {exc!r}")
                    outcomes.append(CaptureOutcome(camera.id, error))
                finally:
                    self.current_camera_ids.discard(camera.id)

        async with asyncio.TaskGroup() as tg:
            for camera in self.cameras:
                if not self.is_due(camera):
                    skipped += 1
                    continue
                tg.create_task(visit_one(camera))

        # Every capture above has returned, and a capture returns only after its process was
        # reaped: a child still tagged with this patrol's purpose is a bug, ended and counted.
        leaks = await self.end_leftovers(self.purpose)

        failed = [o for o in outcomes if o.error is not None]
        stats = CycleStats(
            subnet=self.subnet,
            number=self.cycle_number,
            started_at=started_at,
            ended_at=utcnow(),
            duration=time.monotonic() - t0,
            visited=len(outcomes),
            succeeded=len(outcomes) - len(failed),
            failed=len(failed),
            timed_out=sum(1 for o in failed if o.error and o.error.failure_class == "timeout"),
            skipped=skipped,
            leaks=leaks,
        )
        self.last_cycle = stats
        await self.record_cycle(stats)
        log.debug(
            "subnet %s: cycle %d done in %.1fs, %d ok, %d failed, %d skipped",
            self.subnet,
            stats.number,
            stats.duration,
            stats.succeeded,
            stats.failed,
            stats.skipped,
        )
        return stats
