"""Plain records the store hands out, detached from any database session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class SnapshotRecord:
    """Metadata of a camera's latest snapshot; `path` is the JPEG file, `etag` its sha256."""

    camera_id: str
    taken_at: datetime
    duration: float
    bytes: int
    width: int
    height: int
    driver: str
    etag: str
    path: Path


@dataclass(frozen=True)
class CaptureRecord:
    """One recorded capture attempt; `outcome` is "ok" or a failure class."""

    id: int
    camera_id: str
    started_at: datetime
    ended_at: datetime
    duration: float
    outcome: str
    message: str | None
    bytes: int | None
    width: int | None
    height: int | None
    driver: str
    pid: int | None
    cycle_id: int | None


@dataclass(frozen=True)
class CycleRecord:
    """One recorded patrol cycle of a subnet with its counts."""

    id: int
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
