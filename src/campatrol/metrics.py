"""Prometheus metrics of one Service, in a registry of its own.

Counts come from where things happen (the supervisor's event hook, the service's capture and
cycle paths) or are read from their owner at scrape time (the slot budget); nothing here
polls the process table. A registry per Service, not prometheus-client's global default, so
several Services in one process (tests, the demo) never share or clash over a series.

Label sets are part of the interface (listed in README.md). No label carries a
credential: cameras are named by their id, patrols by their subnet, outcomes by failure class.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from campatrol.slots import SlotBudget
from campatrol.supervisor import SupervisorEvent

WATCHDOG_REASON: Final = "watchdog"

# Seconds. A capture's deadline is 10 s by default and at most 600 s; most successful captures
# take 0.3-3 s, failures pile up at the deadline.
CAPTURE_BUCKETS: Final = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
# Seconds. A cycle visits every camera of a subnet one after the other (by default), so it
# grows with the subnet: a /24 of 250 cameras at ~1 s each takes about four minutes.
CYCLE_BUCKETS: Final = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# Seconds. The loop is healthy below a few milliseconds; above 0.1 s the HTTP API stutters.
LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The metrics of one Service; `render()` gives the Prometheus text exposition."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.captures = Counter(
            "captures", "Capture attempts by camera and outcome.", ["camera", "outcome"], registry=r
        )
        # No camera label: 13 buckets x 1,000 cameras would be 15,000 series for a figure that
        # is read per site; per-camera durations are in the API's recent captures.
        self.capture_duration = Histogram(
            "capture_duration_seconds",
            "Seconds a capture process ran, by outcome (a slot refusal runs none).",
            ["outcome"],
            buckets=CAPTURE_BUCKETS,
            registry=r,
        )
        self.children = Gauge(
            "children", "Live child processes by purpose.", ["purpose"], registry=r
        )
        self.kills = Counter(
            "kills",
            "Signals sent to child process groups, by signal and reason.",
            ["signal", "reason"],
            registry=r,
        )
        self.slot_busy = Counter(
            "slot_busy",
            "Captures refused because no slot of the camera came free in time.",
            ["camera"],
            registry=r,
        )
        self.cycle_duration = Histogram(
            "cycle_duration_seconds",
            "Seconds a patrol cycle took, by subnet.",
            ["subnet"],
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.leaks = Counter(
            "leaks",
            "Children found alive after their capture returned (a bug: stays 0).",
            registry=r,
        )
        self.orphans_ended = Counter(
            "orphans_ended", "Orphan processes of dead campatrol instances ended.", registry=r
        )
        self.watchdog_kills = Counter(
            "watchdog_kills",
            "Children the watchdog had to kill past their deadline (a bug elsewhere).",
            registry=r,
        )
        self.loop_lag = Gauge(
            "event_loop_lag_last_seconds", "Last measured overshoot of a 1 s sleep.", registry=r
        )
        self.loop_lag_histogram = Histogram(
            "event_loop_lag_seconds",
            "Overshoots of a 1 s sleep, measured every second.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._live: Tally[str] = Tally()
        self._watchdog_pids: set[int] = set()

    def watch_slots(self, budget: SlotBudget, camera_ids: Callable[[], Iterable[str]]) -> None:
        """Expose the slot budget's waits and sessions in use, read at scrape time."""
        self.registry.register(_SlotCollector(budget, camera_ids))

    def render(self) -> bytes:
        """Return every metric in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def observe_event(self, event: SupervisorEvent) -> None:
        """Count one supervisor event (a hook for `Supervisor.on_event`)."""
        if event.kind == "spawned":
            self._live[event.purpose] += 1
            self.children.labels(event.purpose).set(self._live[event.purpose])
        elif event.kind == "exited":
            self._live[event.purpose] -= 1
            self.children.labels(event.purpose).set(self._live[event.purpose])
            if event.pid is not None:
                self._watchdog_pids.discard(event.pid)
        elif event.kind == "killed":
            self.kills.labels(event.signal or "", event.reason or "").inc()
            # The watchdog's SIGTERM, SIGKILL and any leftover-group signal are one kill.
            if event.reason == WATCHDOG_REASON and event.pid not in self._watchdog_pids:
                if event.pid is not None:
                    self._watchdog_pids.add(event.pid)
                self.watchdog_kills.inc()

    def observe_capture(self, camera_id: str, outcome: str, ran_for: float | None) -> None:
        """Count one capture attempt; `ran_for` is None when no process was started."""
        self.captures.labels(camera_id, outcome).inc()
        if ran_for is not None:
            self.capture_duration.labels(outcome).observe(ran_for)

    def observe_loop_lag(self, seconds: float) -> None:
        """Record one measurement of the event loop's lag."""
        self.loop_lag.set(seconds)
        self.loop_lag_histogram.observe(seconds)


class _SlotCollector(Collector):
    """Reads the slot budget when Prometheus scrapes, so the budget needs no hooks."""

    def __init__(self, budget: SlotBudget, camera_ids: Callable[[], Iterable[str]]) -> None:
        self._budget = budget
        self._camera_ids = camera_ids

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily("slot_waits", "Lease requests that had to wait for a slot.")
        yield GaugeMetricFamily("sessions_in_use", "Slots leased or held down.", labels=["camera"])

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield CounterMetricFamily(
            "slot_waits",
            "Lease requests that had to wait for a slot.",
            value=self._budget.counters.waits,
        )
        sessions = GaugeMetricFamily(
            "sessions_in_use", "Slots leased or held down, per camera.", labels=["camera"]
        )
        for camera_id in self._camera_ids():
            sessions.add_metric([camera_id], self._budget.in_use(camera_id))
        yield sessions
