"""The Store: SQLite access (SQLAlchemy 2, Alembic schema) and latest-snapshot files."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from campatrol.cameras import CAMERA_ID_PATTERN, mask_secrets
from campatrol.errors import FAILURE_CLASSES
from campatrol.store.files import LATEST, remove_stale_temp_files, write_atomically
from campatrol.store.records import CaptureRecord, CycleRecord, SnapshotRecord
from campatrol.store.schema import CaptureRow, CycleRow, SnapshotRow

logger = logging.getLogger(__name__)

DATABASE_NAME: Final = "campatrol.db"
SNAPSHOT_DIR: Final = "snapshots"
MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
OUTCOMES: Final = frozenset(("ok", *FAILURE_CLASSES))
# Captures are recorded every cycle; a long stderr tail per row would grow the file for nothing.
MESSAGE_LIMIT: Final = 2000
BUSY_TIMEOUT_MS: Final = 5000


class Store:
    """History and latest snapshots under one data directory.

    Methods are synchronous and thread-safe; async callers run them with asyncio.to_thread.
    Times go in and come out as timezone-aware UTC; a naive datetime raises ValueError.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.database = self.data_dir / DATABASE_NAME
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.data_dir)!r})"

    def migrate(self) -> None:
        """Bring the schema to the newest migration and clear temp files left by a crash."""
        config = _alembic_config(self.database)
        with self._get_engine().begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
        remove_stale_temp_files(self.data_dir / SNAPSHOT_DIR)

    def close(self) -> None:
        """Close every database connection; the store can be reopened by using it again."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def save_snapshot(
        self,
        camera_id: str,
        jpeg: bytes,
        *,
        taken_at: datetime,
        duration: float,
        width: int,
        height: int,
        driver: str,
    ) -> SnapshotRecord:
        """Write `jpeg` as the camera's latest.jpg atomically, then record its metadata.

        Readers of the file see the previous image or this one, never a partial file.
        """
        _check_camera_id(camera_id)
        _check_aware(taken_at)
        relative = Path(SNAPSHOT_DIR) / camera_id / LATEST
        write_atomically(self.data_dir / relative, jpeg)

        # Limitation: if the process dies between the rename and this row, the row describes
        # the previous image until the next snapshot (the etag then mismatches the file).
        values: dict[str, Any] = dict(
            camera_id=camera_id,
            taken_at=taken_at,
            duration=duration,
            bytes=len(jpeg),
            width=width,
            height=height,
            driver=driver,
            etag=hashlib.sha256(jpeg).hexdigest(),
            path=relative.as_posix(),
        )
        upsert = sqlite_insert(SnapshotRow).values(**values)
        upsert = upsert.on_conflict_do_update(index_elements=["camera_id"], set_=values)
        with Session(self._get_engine()) as session, session.begin():
            session.execute(upsert)
        return self._snapshot_record(values)

    def latest_snapshot(self, camera_id: str) -> SnapshotRecord | None:
        """Return the metadata of the camera's latest snapshot, or None if it has none yet."""
        with Session(self._get_engine()) as session:
            row = session.get(SnapshotRow, camera_id)
            if row is None:
                return None
            return self._snapshot_record(_columns(row))

    def record_capture(
        self,
        *,
        camera_id: str,
        started_at: datetime,
        ended_at: datetime,
        duration: float,
        outcome: str,
        message: str | None = None,
        bytes: int | None = None,  # the column name; callers pass it by keyword
        width: int | None = None,
        height: int | None = None,
        driver: str = "ffmpeg",
        pid: int | None = None,
        cycle_id: int | None = None,
        secrets: Iterable[str] = (),
    ) -> int:
        """Record one capture attempt and return its id.

        `outcome` is "ok" or a failure class. `message` is masked (the given secrets and any
        URL userinfo) and cut to MESSAGE_LIMIT characters before it is stored.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"capture outcome {outcome!r} is not 'ok' or a failure class")
        _check_aware(started_at, ended_at)
        if message is not None:
            message = mask_secrets(message, secrets)[:MESSAGE_LIMIT]
        row = CaptureRow(
            camera_id=camera_id,
            started_at=started_at,
            ended_at=ended_at,
            duration=duration,
            outcome=outcome,
            message=message,
            bytes=bytes,
            width=width,
            height=height,
            driver=driver,
            pid=pid,
            cycle_id=cycle_id,
        )
        with Session(self._get_engine()) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def record_cycle(
        self,
        *,
        subnet: str,
        number: int,
        started_at: datetime,
        ended_at: datetime,
        duration: float,
        visited: int,
        succeeded: int,
        failed: int,
        timed_out: int,
        skipped: int = 0,
        leaks: int = 0,
    ) -> int:
        """Record one finished cycle of a subnet and return its id."""
        _check_aware(started_at, ended_at)
        row = CycleRow(
            subnet=subnet,
            number=number,
            started_at=started_at,
            ended_at=ended_at,
            duration=duration,
            visited=visited,
            succeeded=succeeded,
            failed=failed,
            timed_out=timed_out,
            skipped=skipped,
            leaks=leaks,
        )
        with Session(self._get_engine()) as session, session.begin():
            session.add(row)
            session.flush()
            return row.id

    def recent_captures(self, camera_id: str, limit: int = 20) -> list[CaptureRecord]:
        """Return the camera's latest `limit` capture attempts, newest first."""
        query = (
            select(CaptureRow)
            .where(CaptureRow.camera_id == camera_id)
            .order_by(CaptureRow.started_at.desc(), CaptureRow.id.desc())
            .limit(limit)
        )
        with Session(self._get_engine()) as session:
            return [CaptureRecord(**_columns(row)) for row in session.scalars(query)]

    def last_cycle(self, subnet: str) -> CycleRecord | None:
        """Return the most recently started recorded cycle of `subnet`, or None."""
        query = (
            select(CycleRow)
            .where(CycleRow.subnet == subnet)
            .order_by(CycleRow.started_at.desc(), CycleRow.id.desc())
            .limit(1)
        )
        with Session(self._get_engine()) as session:
            row = session.scalars(query).first()
            return None if row is None else CycleRecord(**_columns(row))

    def prune(self, now: datetime, retention_days: int) -> dict[str, int]:
        """Delete captures and cycles that started before `now - retention_days`.

        Returns how many rows went per table. Snapshots are one row per camera and stay.
        """
        _check_aware(now)
        if retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, not {retention_days}")
        cutoff = now - timedelta(days=retention_days)
        with Session(self._get_engine()) as session, session.begin():
            captures = session.execute(delete(CaptureRow).where(CaptureRow.started_at < cutoff))
            cycles = session.execute(delete(CycleRow).where(CycleRow.started_at < cutoff))
        counts = {"captures": captures.rowcount, "cycles": cycles.rowcount}
        if any(counts.values()):
            logger.debug("store: pruned %s started before %s", counts, cutoff.isoformat())
        return counts

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._engine = _open_engine(self.database)
            return self._engine

    def _snapshot_record(self, values: dict[str, Any]) -> SnapshotRecord:
        fields = dict(values, path=self.data_dir / values["path"])
        return SnapshotRecord(**fields)


def _open_engine(database: Path) -> Engine:
    # The pool hands one connection to one thread at a time, so sqlite3's same-thread check
    # (meant for connections shared without a pool) only gets in the way of asyncio.to_thread.
    engine = create_engine(f"sqlite:///{database}", connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _configure_connection)
    return engine


def _configure_connection(connection: sqlite3.Connection, _record: object) -> None:
    cursor = connection.cursor()
    try:
        # WAL lets the web layer read while a patrol writes; NORMAL sync is durable in WAL mode
        # except for the last transactions on power loss, which history can afford.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _alembic_config(database: Path) -> Config:
    config = Config()
    # Config values go through configparser interpolation, so a literal "%" must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{database}".replace("%", "%%"))
    return config


def _columns(row: object) -> dict[str, Any]:
    table = type(row).__table__  # type: ignore[attr-defined]
    return {column.key: getattr(row, column.key) for column in table.columns}


def _check_camera_id(camera_id: str) -> None:
    # The id becomes a directory name: a slug cannot climb out of the snapshot directory.
    if not CAMERA_ID_PATTERN.match(camera_id):
        raise ValueError(f"camera id {camera_id!r} is not a slug; refusing to use it as a path")


def _check_aware(*moments: datetime) -> None:
    for moment in moments:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"naive datetime {moment.isoformat()} given to the store; use UTC")
