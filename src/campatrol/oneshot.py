"""One capture outside the patrol, for `campatrol snap`: same supervisor, slots and checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

from campatrol.cameras import Camera
from campatrol.capture import Snapshot, capture_ffmpeg
from campatrol.config import Settings
from campatrol.ffmpeg import find_ffmpeg
from campatrol.slots import SlotBudget
from campatrol.store.files import write_atomically
from campatrol.supervisor import Supervisor


async def snap_once(settings: Settings, camera: Camera, output: Path) -> Snapshot:
    """Capture one snapshot of `camera` and write it to `output` atomically.

    Raises the CaptureError of a failed capture; the process is reaped before it propagates.
    """
    ffmpeg = await asyncio.to_thread(find_ffmpeg)
    slots = SlotBudget()
    slots.configure(camera.id, camera.max_sessions)
    async with Supervisor(1) as supervisor, slots.lease(camera.id, timeout=settings.slot_wait):
        snapshot = await capture_ffmpeg(
            camera,
            supervisor,
            ffmpeg,
            deadline=camera.deadline,
            purpose="snap",
            grace=settings.grace,
        )
    await asyncio.to_thread(write_atomically, output, snapshot.jpeg)
    return snapshot
