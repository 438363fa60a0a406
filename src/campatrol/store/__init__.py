"""The store: SQLite history of captures and cycles, and each camera's latest snapshot file."""

from __future__ import annotations

from campatrol.store.records import CaptureRecord, CycleRecord, SnapshotRecord
from campatrol.store.store import DATABASE_NAME, Store

__all__ = ["DATABASE_NAME", "CaptureRecord", "CycleRecord", "SnapshotRecord", "Store"]
