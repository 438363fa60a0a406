"""Fixtures shared by the whole suite: leak checks on child processes and listening sockets."""

from __future__ import annotations

import contextlib
import os

import psutil
import pytest


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Fail a test that leaves a child process of the test runner behind (and end it)."""
    before = _children()
    yield
    leaked = []
    for pid in _children() - before:
        try:
            proc = psutil.Process(pid)
            leaked.append(f"{pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
            proc.wait(timeout=5)
        except psutil.Error:
            continue
    if leaked:
        pytest.fail("test left child processes behind: " + "; ".join(leaked))


def pytest_sessionfinish(session, exitstatus):
    """Last line of defence: nothing the suite started may survive it."""
    for child in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child.kill()
