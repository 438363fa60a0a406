"""Per-camera slot budget: never more connections to a camera than it has sessions.

A lease holds one of a camera's `max_sessions` slots for the whole life of the process or
connection that uses it. Callers write

    async with budget.lease(camera.id, timeout=5) as lease:
        result = await supervisor.run(...)

and since `Supervisor.run` neither returns nor raises before its child is reaped, the slot is
released only once the connection is gone. Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from campatrol.errors import CaptureBusy

logger = logging.getLogger(__name__)


@dataclass
class SlotCounters:
    """Totals since start, over all cameras."""

    granted: int = 0  # leases handed out
    waits: int = 0  # lease requests that had to wait for a slot
    busy: int = 0  # lease requests refused as busy after their timeout


@dataclass(eq=False)
class Lease:
    """The holding of one slot of one camera."""

    camera_id: str
    granted_at: float  # time.monotonic()
    _hold: float = 0.0

    def hold_down(self, seconds: float) -> None:
        """Keep the slot taken for `seconds` after release.

        Models a camera that keeps the session of a client it never saw tear down (a SIGKILLed
        ffmpeg) until its own session timeout. Several calls keep the longest hold.
        """
        if seconds < 0:
            raise ValueError(f"hold-down must not be negative, got {seconds}")
        self._hold = max(self._hold, seconds)


@dataclass(eq=False)
class _Camera:
    limit: int
    taken: int = 0  # leases held plus slots in hold-down
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    holds: set[asyncio.TimerHandle] = field(default_factory=set)


class SlotBudget:
    """The slot budget of every camera; one instance per process, shared by all captures."""

    def __init__(self) -> None:
        self._cameras: dict[str, _Camera] = {}
        self.counters = SlotCounters()

    def __repr__(self) -> str:
        used = {cid: f"{cam.taken}/{cam.limit}" for cid, cam in self._cameras.items()}
        return f"<SlotBudget {used}>"

    def configure(self, camera_id: str, max_sessions: int) -> None:
        """Set how many slots `camera_id` has; lowering it never revokes leases already held."""
        if max_sessions < 1:
            raise ValueError(f"camera {camera_id}: max_sessions must be at least 1")
        camera = self._cameras.get(camera_id)
        if camera is None:
            self._cameras[camera_id] = _Camera(limit=max_sessions)
            return
        camera.limit = max_sessions
        self._hand_over(camera)

    def in_use(self, camera_id: str) -> int:
        """Return the slots of `camera_id` that are leased or held down."""
        return self._camera(camera_id).taken

    def waiting(self, camera_id: str) -> int:
        """Return how many lease requests wait for a slot of `camera_id`."""
        return sum(1 for waiter in self._camera(camera_id).waiters if not waiter.done())

    def limit(self, camera_id: str) -> int:
        """Return the configured `max_sessions` of `camera_id`."""
        return self._camera(camera_id).limit

    # `timeout` bounds only the wait for a slot, not the body, so asyncio.timeout cannot replace it.
    @contextlib.asynccontextmanager
    async def lease(self, camera_id: str, *, timeout: float) -> AsyncIterator[Lease]:  # noqa: ASYNC109
        """Hold one slot of `camera_id` for the body of the `async with`.

        Waits up to `timeout` seconds (FIFO behind earlier requests; 0 means do not wait) and
        raises CaptureBusy if no slot frees up, having started nothing. Cancellation while
        waiting leaves the budget as it was. The release on exit cannot be interrupted: it does
        not await.
        """
        camera = self._camera(camera_id)
        await self._acquire(camera_id, camera, timeout)
        lease = Lease(camera_id, time.monotonic())
        self.counters.granted += 1
        try:
            yield lease
        finally:
            self._release(camera, lease)

    def close(self) -> None:
        """Drop pending hold-downs (at shutdown; they would otherwise outlive the event loop)."""
        for camera in self._cameras.values():
            for handle in camera.holds:
                handle.cancel()
            camera.taken -= len(camera.holds)
            camera.holds.clear()

    def _camera(self, camera_id: str) -> _Camera:
        try:
            return self._cameras[camera_id]
        except KeyError:
            raise ValueError(f"camera {camera_id}: no slot budget configured") from None

    async def _acquire(self, camera_id: str, camera: _Camera, wait_limit: float) -> None:
        if camera.taken < camera.limit and not any(not w.done() for w in camera.waiters):
            camera.taken += 1
            return
        if wait_limit <= 0:
            raise self._busy(camera_id, camera, wait_limit)
        self.counters.waits += 1
        waiter = asyncio.get_running_loop().create_future()
        camera.waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_limit):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot arrived together with the timeout: keep it
            self._forget(camera, waiter)
            raise self._busy(camera_id, camera, wait_limit) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot(camera)  # granted just as we were cancelled: hand it on
            else:
                self._forget(camera, waiter)
            raise

    def _busy(self, camera_id: str, camera: _Camera, wait_limit: float) -> CaptureBusy:
        self.counters.busy += 1
        return CaptureBusy(
            f"camera {camera_id}: no free slot within {max(wait_limit, 0):.1f}s "
            f"({camera.taken} of {camera.limit} in use)"
        )

    @staticmethod
    def _forget(camera: _Camera, waiter: asyncio.Future[None]) -> None:
        waiter.cancel()
        # _hand_over may already have dropped it as done.
        with contextlib.suppress(ValueError):
            camera.waiters.remove(waiter)

    def _release(self, camera: _Camera, lease: Lease) -> None:
        if lease._hold <= 0:
            self._free_slot(camera)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def end_hold() -> None:
            camera.holds.discard(handle)  # type: ignore[arg-type]
            self._free_slot(camera)

        handle = loop.call_later(lease._hold, end_hold)
        camera.holds.add(handle)
        logger.debug("camera %s: slot held down for %.1fs", lease.camera_id, lease._hold)

    def _free_slot(self, camera: _Camera) -> None:
        camera.taken -= 1
        self._hand_over(camera)

    def _hand_over(self, camera: _Camera) -> None:
        # A slot passes straight to the oldest live waiter, so no newcomer can overtake it.
        while camera.waiters and camera.taken < camera.limit:
            waiter = camera.waiters.popleft()
            if not waiter.done():
                camera.taken += 1
                waiter.set_result(None)
