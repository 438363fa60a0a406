"""Image files of the store: atomic replacement of a camera's latest.jpg."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

LATEST: Final = "latest.jpg"
_TEMP_PREFIX: Final = ".latest."
_TEMP_SUFFIX: Final = ".tmp"


def write_atomically(target: Path, data: bytes) -> None:
    """Replace `target` with `data` so that readers see the old file or the new one, never a mix.

    The bytes go to a temporary file in the same directory (so the rename stays inside one
    filesystem), are fsynced, and only then renamed over the target; the directory is fsynced
    so the rename itself survives a power loss. On any error the temporary file is removed and
    the target is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=target.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_directory(target.parent)


def remove_stale_temp_files(root: Path, older_than: float = 60.0) -> int:
    """Delete temporary image files a crashed writer left under `root`; return how many.

    Only files older than `older_than` seconds go, so a write in progress in another thread
    keeps its file.
    """
    if not root.is_dir():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for temp in root.glob(f"*/{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
                removed += 1
    if removed:
        logger.warning("store: removed %d temporary image file(s) left by a crash", removed)
    return removed


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
