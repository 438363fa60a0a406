"""Per-camera health and backoff rules: the arithmetic that decides when a camera is retried."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from campatrol.config import Settings
from campatrol.errors import CaptureConfigError, CaptureTimeout, CaptureUnauthorized
from campatrol.patrol import (
    FAILING,
    MISCONFIGURED,
    OFFLINE,
    ONLINE,
    CameraHealth,
    backoff_delay,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def settings(**overrides: object) -> Settings:
    return Settings(**{"interval": 10.0, "backoff_max": 300.0, **overrides})


def test_first_failure_is_retried_next_cycle_then_backoff_doubles_up_to_the_cap():
    rng = random.Random(1)
    s = settings()
    delays = [backoff_delay(n, CaptureTimeout("t"), s, rng) for n in range(1, 9)]
    assert delays[0] == 0.0
    # ±20% jitter around 10, 20, 40, 80, 160, 300, 300
    for got, nominal in zip(delays[1:], [10, 20, 40, 80, 160, 300, 300], strict=True):
        assert nominal * 0.8 <= got <= nominal * 1.2
    assert max(delays) <= 300 * 1.2


def test_backoff_base_overrides_the_interval():
    got = backoff_delay(2, CaptureTimeout("t"), settings(backoff_base=3.0), random.Random(2))
    assert 3.0 * 0.8 <= got <= 3.0 * 1.2


def test_unauthorized_waits_longer_than_a_login_lockout_from_the_first_failure():
    s = settings(unauthorized_backoff=1800.0)
    got = backoff_delay(1, CaptureUnauthorized("401"), s, random.Random(3))
    assert got >= 1800.0


def test_status_moves_failing_then_offline_and_success_resets_it():
    s = settings(failing_after=1, offline_after=3)
    health = CameraHealth()
    rng = random.Random(4)
    statuses = []
    for i in range(3):
        health.record_failure(NOW + timedelta(seconds=i), CaptureTimeout("t"), s, rng)
        statuses.append(health.status)
    assert statuses == [FAILING, FAILING, OFFLINE]
    assert health.consecutive_failures == 3
    assert not health.due(NOW + timedelta(seconds=3))
    health.record_success(NOW + timedelta(hours=1))
    assert (health.status, health.consecutive_failures, health.last_error) == (ONLINE, 0, None)
    assert health.due(NOW + timedelta(hours=1))


@pytest.mark.parametrize("failures", [1, 5])
def test_config_failure_is_not_retried_and_does_not_mark_offline(failures):
    s = settings(offline_after=2)
    health = CameraHealth()
    for _ in range(failures):
        health.record_failure(NOW, CaptureConfigError("Unrecognized option"), s, random.Random())
    assert health.status == MISCONFIGURED
    assert health.consecutive_failures == 0
    assert not health.due(NOW + timedelta(days=1))


def test_a_first_failure_is_retried_in_the_next_cycle_without_a_scheduled_time():
    health = CameraHealth()
    health.record_failure(NOW, CaptureTimeout("t"), settings(), random.Random(5))
    assert health.next_attempt_at is None
    assert health.due(NOW)
