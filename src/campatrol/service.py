"""The composition root: supervisor, slots, store and one patrol per subnet, run together."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final

from campatrol import __version__
from campatrol.alerts import (
    BUSY,
    CHILDREN_CAMERA,
    CHILDREN_TOTAL,
    ERROR,
    LEAK,
    OFFLINE,
    ORPHAN,
    WARNING,
    WATCHDOG_KILL,
    Alerts,
)
from campatrol.cameras import Camera
from campatrol.capture import Snapshot, capture_ffmpeg
from campatrol.config import ConfigProblem, Settings, group_by_subnet
from campatrol.errors import CaptureBusy, CaptureError, CaptureInternalError, CaptureTimeout
from campatrol.ffmpeg import FfmpegInfo, find_ffmpeg
from campatrol.metrics import WATCHDOG_REASON, Metrics
from campatrol.patrol import (
    DISABLED,
    MISCONFIGURED,
    ONLINE,
    UNKNOWN,
    CameraHealth,
    CaptureOutcome,
    CycleStats,
    Patrol,
    utcnow,
)
from campatrol.patrol import OFFLINE as OFFLINE_STATUS
from campatrol.slots import SlotBudget
from campatrol.store import SnapshotRecord, Store
from campatrol.supervisor import Supervisor, SupervisorEvent

log = logging.getLogger(__name__)

MANUAL_PURPOSE: Final = "manual"
PRUNE_EVERY: Final = 3600.0
LAG_PROBE_EVERY: Final = 1.0


class Service:
    """Owns every long-lived part of a running campatrol and patrols its cameras.

    Use as `async with Service(...) as service: await service.run()`. Entering it ends the
    orphans a dead campatrol instance left on the host (unless `sweep_orphans` is False);
    leaving it ends every child process (the supervisor's one way: SIGTERM, grace, SIGKILL,
    reap) and closes the store.
    """

    version: Final = __version__

    def __init__(
        self,
        settings: Settings,
        cameras: Sequence[Camera],
        problems: Sequence[ConfigProblem] = (),
        *,
        ffmpeg: FfmpegInfo | None = None,
        instance_id: str | None = None,
        sweep_orphans: bool = True,
    ) -> None:
        self.settings = settings
        self.cameras: dict[str, Camera] = {camera.id: camera for camera in cameras}
        self.problems = list(problems)
        self.ffmpeg: FfmpegInfo | None = ffmpeg
        self.supervisor = Supervisor(settings.max_processes, instance_id)
        self.slots = SlotBudget()
        self.store = Store(Path(settings.data_dir))
        self.started_at = utcnow()
        self.orphans_ended: list[int] = []
        self._sweep_orphans = sweep_orphans
        self._rng = random.Random()
        self._health: dict[str, CameraHealth] = {}
        self.metrics = Metrics()
        self.metrics.watch_slots(self.slots, lambda: list(self.cameras))
        self.alerts = Alerts(settings.alerts)
        self.supervisor.on_event(self._on_supervisor_event)
        for camera in cameras:
            self.slots.configure(camera.id, camera.max_sessions)
            self._health[camera.id] = CameraHealth(status=UNKNOWN if camera.enabled else DISABLED)
        enabled = [camera for camera in cameras if camera.enabled]
        self.patrols: dict[str, Patrol] = {
            subnet: Patrol(
                subnet=subnet,
                cameras=members,
                settings=settings,
                visit=self._visit,
                is_due=self._is_due,
                end_leftovers=self._end_leftovers,
                record_cycle=self._record_cycle,
            )
            for subnet, members in group_by_subnet(enabled).items()
        }

    async def __aenter__(self) -> Service:
        if self.ffmpeg is None:
            self.ffmpeg = await asyncio.to_thread(find_ffmpeg)
        await asyncio.to_thread(self.store.migrate)
        await self.supervisor.__aenter__()
        if self._sweep_orphans:
            self.orphans_ended = await self.supervisor.sweep_orphans()
        if self.orphans_ended:
            log.warning(
                "ended %d orphan process(es) of a dead campatrol instance: %s",
                len(self.orphans_ended),
                self.orphans_ended,
            )
            self.metrics.orphans_ended.inc(len(self.orphans_ended))
            message = f"ended {len(self.orphans_ended)} orphan process(es) of a dead instance"
            self.alerts.start(ORPHAN, "host", message, WARNING)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.supervisor.__aexit__(exc_type, exc, tb)
        finally:
            await asyncio.shield(asyncio.to_thread(self.store.close))

    async def run(self) -> None:
        """Patrol every subnet concurrently, prune old records, measure the event loop's lag
        and deliver alerts to the webhook, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for patrol in self.patrols.values():
                tg.create_task(patrol.run(), name=f"patrol {patrol.subnet}")
            tg.create_task(self._prune_forever(), name="retention")
            tg.create_task(self._probe_loop_lag_forever(), name="loop lag")
            tg.create_task(self.supervisor.watchdog(), name="watchdog")
            if self.settings.alerts.webhook_url is not None:
                tg.create_task(self.alerts.deliver_forever(), name="alert webhook")

    def health(self, camera_id: str) -> CameraHealth:
        """The current health of a camera; KeyError for an unknown id."""
        return self._health[camera_id]

    async def capture_now(self, camera_id: str) -> SnapshotRecord:
        """Capture one snapshot of a camera now, inside its slot budget.

        Raises KeyError for an unknown camera, CaptureBusy when no slot frees up within the
        slot wait, and the CaptureError of a failed capture. Cancellation kills the capture's
        process and frees its slot before it propagates.
        """
        camera = self.cameras[camera_id]
        return await self._capture(camera, MANUAL_PURPOSE)

    async def _visit(self, camera: Camera, purpose: str) -> CaptureOutcome:
        try:
            await self._capture(camera, purpose)
        except CaptureError as exc:
            return CaptureOutcome(camera.id, exc)
        return CaptureOutcome(camera.id)

    def _is_due(self, camera: Camera) -> bool:
        return self._health[camera.id].due(utcnow())

    async def _capture(self, camera: Camera, purpose: str) -> SnapshotRecord:
        if self.ffmpeg is None:
            raise RuntimeError(f"{self!r} is not started: use it as an async context manager")
        started = utcnow()
        ran_for: float | None = None
        try:
            async with self.slots.lease(camera.id, timeout=self.settings.slot_wait) as lease:
                t0 = time.monotonic()
                try:
                    snapshot = await capture_ffmpeg(
                        camera,
                        self.supervisor,
                        self.ffmpeg,
                        deadline=camera.deadline,
                        purpose=purpose,
                        grace=self.settings.grace,
                    )
                except CaptureTimeout:
                    # The process was killed; a camera that never saw TEARDOWN may keep the
                    # session until its own timeout, so the slot stays taken that long.
                    if camera.hold_after_kill > 0:
                        lease.hold_down(camera.hold_after_kill)
                    raise
                finally:
                    ran_for = time.monotonic() - t0
            record = await self._store_snapshot(camera, snapshot)
        except CaptureError as exc:
            # A busy answer with no process run is our own slot budget refusing; with one, it
            # is the camera saying its sessions are taken (by someone else, as ours are leased).
            camera_busy = isinstance(exc, CaptureBusy) and ran_for is not None
            if isinstance(exc, CaptureBusy) and ran_for is None:
                self.metrics.slot_busy.labels(camera.id).inc()
            self.metrics.observe_capture(camera.id, exc.failure_class, ran_for)
            self._note_failure(camera, exc)
            self._check_camera_alerts(camera, camera_busy=camera_busy)
            await self._record_attempt(camera, started, exc, None)
            raise
        self.metrics.observe_capture(camera.id, "ok", ran_for)
        health = self._health[camera.id]
        if health.status not in (ONLINE, UNKNOWN):
            log.info(
                "camera %s: back online after %d failure(s)", camera.id, health.consecutive_failures
            )
        health.record_success(utcnow())
        self._check_camera_alerts(camera, camera_busy=False)
        await self._record_attempt(camera, started, None, record)
        return record

    async def _store_snapshot(self, camera: Camera, snapshot: Snapshot) -> SnapshotRecord:
        try:
            return await asyncio.to_thread(
                self.store.save_snapshot,
                camera.id,
                snapshot.jpeg,
                taken_at=snapshot.taken_at,
                duration=snapshot.duration,
                width=snapshot.width,
                height=snapshot.height,
                driver=snapshot.driver,
            )
        except OSError as exc:
            # A full disk or a broken data directory fails this camera's capture, visibly, and
            # leaves the patrol and the other cameras running.
            raise CaptureInternalError(
                f"camera {camera.id}: cannot store the snapshot: {exc.strerror or exc}"
            ) from exc

    def _check_camera_alerts(self, camera: Camera, *, camera_busy: bool) -> None:
        health = self._health[camera.id]
        offline = health.status == OFFLINE_STATUS
        reason = health.last_error_class or "unknown"
        message = (
            f"camera {camera.id}: offline after {health.consecutive_failures} failures ({reason})"
        )
        self.alerts.update(OFFLINE, camera.id, offline, message, WARNING)
        message = f"camera {camera.id}: answers busy; another client holds its sessions"
        self.alerts.update(BUSY, camera.id, camera_busy, message, WARNING)

    def _on_supervisor_event(self, event: SupervisorEvent) -> None:
        self.metrics.observe_event(event)
        if event.kind == "killed" and event.reason == WATCHDOG_REASON:
            subject = event.camera_id or event.purpose
            message = f"watchdog killed child {event.pid} ({event.purpose}) past its deadline"
            self.alerts.start(WATCHDOG_KILL, subject, message, ERROR)
        if event.camera_id is None or event.kind not in ("spawned", "exited"):
            return
        self._check_children_alerts(event.camera_id)

    def _check_children_alerts(self, camera_id: str) -> None:
        alerts = self.settings.alerts
        total = self.supervisor.running
        limit = alerts.max_children_total
        limit = self.settings.max_processes if limit is None else limit
        message = f"{total} child processes running, more than {limit}"
        self.alerts.update(CHILDREN_TOTAL, "all", total > limit, message, ERROR)
        # The registry is current when the event fires (spawned after registering, exited
        # after unregistering), so the count is read from it rather than kept twice.
        count = sum(1 for child in self.supervisor.children() if child.camera_id == camera_id)
        limit = alerts.max_children_per_camera
        if limit is None:
            camera = self.cameras.get(camera_id)
            limit = camera.max_sessions if camera is not None else self.settings.max_processes
        message = f"camera {camera_id}: {count} child processes running, more than {limit}"
        self.alerts.update(CHILDREN_CAMERA, camera_id, count > limit, message, ERROR)

    def _note_failure(self, camera: Camera, exc: CaptureError) -> None:
        health = self._health[camera.id]
        before = (health.status, health.last_error_class)
        health.record_failure(utcnow(), exc, self.settings, self._rng)
        # One line per change of state, not one per cycle for the same state.
        if (health.status, health.last_error_class) != before:
            if health.next_attempt_at is not None:
                next_try = health.next_attempt_at.isoformat()
            elif health.status == MISCONFIGURED:
                next_try = "never (fix the configuration)"
            else:
                next_try = "next cycle"
            # The error's own message starts with the camera id.
            log.warning(
                "%s (%s); status %s, next try %s", exc, exc.failure_class, health.status, next_try
            )

    async def _record_attempt(
        self,
        camera: Camera,
        started: datetime,
        error: CaptureError | None,
        record: SnapshotRecord | None,
    ) -> None:
        ended = utcnow()
        await asyncio.to_thread(
            self.store.record_capture,
            camera_id=camera.id,
            started_at=started,
            ended_at=ended,
            duration=(ended - started).total_seconds(),
            outcome="ok" if error is None else error.failure_class,
            message=None if error is None else str(error),
            bytes=record.bytes if record else None,
            width=record.width if record else None,
            height=record.height if record else None,
            driver="ffmpeg",
            secrets=camera.secrets(),
        )

    async def _end_leftovers(self, purpose: str) -> int:
        leftovers = [c for c in self.supervisor.children() if c.purpose == purpose]
        for child in leftovers:
            log.error(
                "leak: %s child %d (camera %s) outlived its capture; ending it",
                purpose,
                child.pid,
                child.camera_id,
            )
            await self.supervisor.terminate(child.pid, reason="leak")
        self.metrics.leaks.inc(len(leftovers))
        return len(leftovers)

    async def _record_cycle(self, stats: CycleStats) -> None:
        self.metrics.cycle_duration.labels(stats.subnet).observe(stats.duration)
        if stats.leaks:
            message = (
                f"subnet {stats.subnet}: {stats.leaks} child process(es) outlived their capture"
            )
            self.alerts.start(LEAK, stats.subnet, message, ERROR)
        self.alerts.expire_events()
        await asyncio.to_thread(functools.partial(self.store.record_cycle, **asdict(stats)))

    async def _probe_loop_lag_forever(self) -> None:
        # A sleep that wakes late measures how long the loop was busy with something else.
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LAG_PROBE_EVERY)
            self.metrics.observe_loop_lag(max(0.0, time.monotonic() - t0 - LAG_PROBE_EVERY))

    async def _prune_forever(self) -> None:
        while True:
            now = utcnow()
            counts = await asyncio.to_thread(self.store.prune, now, self.settings.retention_days)
            log.debug(
                "retention: pruned %s older than %s",
                counts,
                now - timedelta(days=self.settings.retention_days),
            )
            await asyncio.sleep(PRUNE_EVERY)
