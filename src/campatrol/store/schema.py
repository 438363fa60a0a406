"""Database tables of the store, as typed SQLAlchemy 2 ORM models."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, Float, ForeignKey, Index, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always returned timezone-aware in UTC.

    SQLite has no time zone type; storing one fixed zone keeps string comparison (used by
    retention) equal to time comparison. A naive datetime is refused rather than guessed.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store; use UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base holding the metadata the migrations are checked against."""


class CycleRow(Base):
    """One pass of a patrol over its subnet, with its counts."""

    __tablename__ = "cycles"
    __table_args__ = (Index("ix_cycles_subnet_started_at", "subnet", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    subnet: Mapped[str] = mapped_column(String(255))
    number: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration: Mapped[float] = mapped_column(Float)
    visited: Mapped[int]
    succeeded: Mapped[int]
    failed: Mapped[int]
    timed_out: Mapped[int]
    skipped: Mapped[int]
    leaks: Mapped[int]


class CaptureRow(Base):
    """One capture attempt and how it ended ("ok" or a failure class)."""

    __tablename__ = "captures"
    __table_args__ = (Index("ix_captures_camera_id_started_at", "camera_id", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(63))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ended_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    bytes: Mapped[int | None]
    width: Mapped[int | None]
    height: Mapped[int | None]
    driver: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None]
    cycle_id: Mapped[int | None] = mapped_column(ForeignKey("cycles.id", ondelete="SET NULL"))


class SnapshotRow(Base):
    """The latest snapshot of one camera; the image itself is a file under the data directory."""

    __tablename__ = "snapshots"

    camera_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration: Mapped[float] = mapped_column(Float)
    bytes: Mapped[int]
    width: Mapped[int]
    height: Mapped[int]
    driver: Mapped[str] = mapped_column(String(16))
    etag: Mapped[str] = mapped_column(String(64))  # sha256 of the JPEG, hex
    path: Mapped[str] = mapped_column(Text)  # relative to the data directory
