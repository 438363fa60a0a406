"""Store: migrations, atomic snapshot files, history, retention and UTC times on real SQLite."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from campatrol.store import Store
from campatrol.store.schema import Base

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
JPEG_A = b"\xff\xd8" + b"A" * 1000 + b"\xff\xd9"
JPEG_B = b"\xff\xd8" + b"B" * 2000 + b"\xff\xd9"


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "data")
    store.migrate()
    yield store
    store.close()


def save(store: Store, camera_id: str, jpeg: bytes, taken_at: datetime = T0):
    return store.save_snapshot(
        camera_id, jpeg, taken_at=taken_at, duration=1.5, width=640, height=360, driver="ffmpeg"
    )


def capture(store: Store, camera_id: str, started_at: datetime, **extra) -> int:
    fields = dict(
        camera_id=camera_id,
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=2),
        duration=2.0,
        outcome="ok",
    )
    return store.record_capture(**(fields | extra))


def cycle(store: Store, subnet: str, number: int, started_at: datetime) -> int:
    return store.record_cycle(
        subnet=subnet,
        number=number,
        started_at=started_at,
        ended_at=started_at + timedelta(seconds=12),
        duration=12.0,
        visited=6,
        succeeded=5,
        failed=1,
        timed_out=1,
        skipped=0,
        leaks=0,
    )


def snapshot_files(store: Store, camera_id: str) -> list[str]:
    return sorted(p.name for p in (store.data_dir / "snapshots" / camera_id).iterdir())


def test_migrate_builds_the_schema_in_an_empty_directory_and_is_idempotent(tmp_path):
    store = Store(tmp_path / "new" / "data")
    store.migrate()
    store.migrate()
    store.close()

    with sqlite3.connect(tmp_path / "new" / "data" / "campatrol.db") as db:
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        version = db.execute("SELECT version_num FROM alembic_version").fetchall()
        journal = db.execute("PRAGMA journal_mode").fetchone()
    assert {"captures", "cycles", "snapshots", "alembic_version"} <= tables
    assert version == [("0001",)]
    assert journal == ("wal",)


def test_migrations_produce_exactly_the_schema_the_models_describe(store):
    engine = create_engine(f"sqlite:///{store.database}")
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()

    assert diff == []


def test_save_snapshot_writes_latest_jpg_and_leaves_no_temp_file(store):
    record = save(store, "door", JPEG_A)

    assert record.path == store.data_dir / "snapshots" / "door" / "latest.jpg"
    assert record.path.read_bytes() == JPEG_A
    assert snapshot_files(store, "door") == ["latest.jpg"]
    assert (record.bytes, record.width, record.height, record.driver) == (1004, 640, 360, "ffmpeg")
    assert store.latest_snapshot("door") == record


def test_latest_snapshot_is_none_before_the_first_snapshot(store):
    assert store.latest_snapshot("door") is None


def test_next_snapshot_replaces_file_and_metadata(store):
    first = save(store, "door", JPEG_A, T0)
    second = save(store, "door", JPEG_B, T0 + timedelta(minutes=1))

    latest = store.latest_snapshot("door")
    assert latest == second
    assert latest.etag != first.etag
    assert latest.taken_at == T0 + timedelta(minutes=1)
    assert latest.path.read_bytes() == JPEG_B
    assert snapshot_files(store, "door") == ["latest.jpg"]


def test_times_round_trip_as_aware_utc(store):
    # 13:00:00.123456 at +01:00 is the same instant as T0.
    paris_winter = T0.astimezone(timezone(timedelta(hours=1)))
    save(store, "door", JPEG_A, paris_winter)
    capture(store, "door", paris_winter)
    cycle(store, "127.0.1.0/24", 1, paris_winter)

    snapshot = store.latest_snapshot("door")
    (attempt,) = store.recent_captures("door", 10)
    last = store.last_cycle("127.0.1.0/24")

    for moment in (snapshot.taken_at, attempt.started_at, last.started_at):
        assert moment == T0
        assert moment.tzinfo is UTC
    assert attempt.ended_at == T0 + timedelta(seconds=2)


def test_naive_datetimes_are_refused(store):
    naive = T0.replace(tzinfo=None)

    with pytest.raises(ValueError, match="naive datetime"):
        save(store, "door", JPEG_A, naive)
    with pytest.raises(ValueError, match="naive datetime"):
        capture(store, "door", naive)
    with pytest.raises(ValueError, match="naive datetime"):
        store.prune(naive, 7)


def test_prune_deletes_only_rows_older_than_retention(store):
    now = T0 + timedelta(days=30)
    old_cycle = cycle(store, "127.0.1.0/24", 1, now - timedelta(days=7, seconds=1))
    kept_cycle = cycle(store, "127.0.1.0/24", 2, now - timedelta(days=6, hours=23))
    capture(store, "door", now - timedelta(days=8))
    # A kept capture may point at a pruned cycle: the link is cleared, the capture stays.
    capture(store, "door", now - timedelta(days=1), cycle_id=old_cycle)
    capture(store, "door", now, cycle_id=kept_cycle)
    save(store, "door", JPEG_A, now - timedelta(days=60))

    counts = store.prune(now, retention_days=7)

    assert counts == {"captures": 1, "cycles": 1}
    remaining = store.recent_captures("door", 10)
    assert [c.started_at for c in remaining] == [now, now - timedelta(days=1)]
    assert [c.cycle_id for c in remaining] == [kept_cycle, None]
    assert store.last_cycle("127.0.1.0/24").id == kept_cycle
    assert store.latest_snapshot("door") is not None
    assert store.prune(now, retention_days=7) == {"captures": 0, "cycles": 0}


def test_recent_captures_are_newest_first_limited_and_per_camera(store):
    for minute in range(5):
        capture(store, "door", T0 + timedelta(minutes=minute), pid=1000 + minute)
    capture(store, "yard", T0 + timedelta(hours=1))

    recent = store.recent_captures("door", 3)

    assert [c.pid for c in recent] == [1004, 1003, 1002]
    assert {c.camera_id for c in recent} == {"door"}


def test_last_cycle_is_the_latest_of_that_subnet(store):
    cycle(store, "127.0.1.0/24", 1, T0)
    second = cycle(store, "127.0.1.0/24", 2, T0 + timedelta(minutes=1))
    cycle(store, "127.0.2.0/24", 9, T0 + timedelta(minutes=5))

    last = store.last_cycle("127.0.1.0/24")

    assert (last.id, last.number, last.visited, last.succeeded, last.failed) == (second, 2, 6, 5, 1)
    assert store.last_cycle("::1") is None


def test_capture_message_is_masked_and_bounded(store):
    message = "rtsp://admin:hunter22@127.0.1.5:8554/stream1 said 401; pw hunter22 " + "x" * 5000

    capture(store, "door", T0, outcome="unauthorized", message=message, secrets=["hunter22"])

    (stored,) = store.recent_captures("door", 1)
    assert stored.outcome == "unauthorized"
    assert stored.message.startswith("rtsp://***:***@127.0.1.5:8554/stream1 said 401; pw ***")
    assert "hunter22" not in stored.message
    assert len(stored.message) == 2000


def test_unknown_outcome_is_refused(store):
    with pytest.raises(ValueError, match="not 'ok' or a failure class"):
        capture(store, "door", T0, outcome="weird")


@pytest.mark.parametrize("camera_id", ["../escape", "a/b", "", ".hidden", "UPPER"])
def test_camera_id_that_is_not_a_slug_never_becomes_a_path(store, camera_id):
    with pytest.raises(ValueError, match="not a slug"):
        save(store, camera_id, JPEG_A)

    assert not (store.data_dir / "escape").exists()


def test_temp_file_left_by_a_crash_does_not_corrupt_latest_and_is_swept(store):
    record = save(store, "door", JPEG_A)
    # What a writer killed mid-write leaves: a partial temp file next to latest.jpg.
    stale = record.path.parent / ".latest.crashed.tmp"
    stale.write_bytes(JPEG_B[:100])
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    in_progress = record.path.parent / ".latest.writing.tmp"
    in_progress.write_bytes(JPEG_B[:100])

    assert store.latest_snapshot("door").path.read_bytes() == JPEG_A
    store.migrate()

    assert snapshot_files(store, "door") == [".latest.writing.tmp", "latest.jpg"]
    assert record.path.read_bytes() == JPEG_A
    assert save(store, "door", JPEG_B).path.read_bytes() == JPEG_B


def test_failed_write_keeps_the_previous_image_and_leaves_no_temp_file(store):
    # A real write failure, not a mock: a child process whose file size limit is smaller than
    # the new image gets EFBIG mid-write, exactly like a full disk.
    save(store, "door", JPEG_A)
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from datetime import datetime, UTC
        from pathlib import Path
        from campatrol.store import Store
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = Store(Path({str(store.data_dir)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        try:
            store.save_snapshot("door", b"\\xff\\xd8" + b"C" * 100000, taken_at=datetime.now(UTC),
                                duration=1.0, width=1, height=1, driver="ffmpeg")
        except OSError as exc:
            print("write failed:", exc.errno)
            sys.exit(3)
        """
    )

    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20, check=False
    )

    assert result.returncode == 3, result.stderr
    assert result.stdout.strip() == "write failed: 27"  # EFBIG
    assert snapshot_files(store, "door") == ["latest.jpg"]
    assert (store.data_dir / "snapshots" / "door" / "latest.jpg").read_bytes() == JPEG_A
    assert store.latest_snapshot("door").bytes == len(JPEG_A)


def test_threads_can_write_at_once_without_losing_rows(store):
    # The web layer and every patrol call the store from worker threads at the same time.
    errors: list[BaseException] = []

    def write_many(camera_id: str) -> None:
        try:
            for index in range(25):
                capture(store, camera_id, T0 + timedelta(seconds=index))
                save(store, camera_id, JPEG_A if index % 2 else JPEG_B)
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write_many, args=(f"cam{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=25)

    assert errors == []
    assert [len(store.recent_captures(f"cam{n}", 100)) for n in range(4)] == [25, 25, 25, 25]
    assert store.latest_snapshot("cam2").path.read_bytes() == JPEG_B  # index 24 is even


def test_data_survives_close_and_reopen(tmp_path):
    first = Store(tmp_path)
    first.migrate()
    save(first, "door", JPEG_A)
    first.close()

    second = Store(tmp_path)
    second.migrate()
    try:
        assert second.latest_snapshot("door").path.read_bytes() == JPEG_A
    finally:
        second.close()


def test_store_takes_its_time_and_path_from_nothing_but_its_arguments(tmp_path):
    # Paths with "%" break configparser interpolation in Alembic's Config unless escaped.
    store = Store(tmp_path / "odd %dir name")
    try:
        store.migrate()
        assert save(store, "door", JPEG_A).path.is_file()
    finally:
        store.close()


def test_records_are_plain_values(store):
    record = save(store, "door", JPEG_A)

    assert isinstance(record.path, Path)
    with pytest.raises(AttributeError):
        record.bytes = 0  # type: ignore[misc]
