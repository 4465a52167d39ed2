"""Prometheus metrics of a worker: throughput, lag, dead letters, model version, online loss.

Each worker owns a registry (not the global one) so several workers can live in one test process.
``events_per_second`` is a gauge over a sliding window because dashboards and people both ask
"how fast is it going right now" more often than they write ``rate()`` queries.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class RateWindow:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._marks: deque[tuple[float, int]] = deque()

    def add(self, count: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._marks.append((now, count))
        self._trim(now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if not self._marks:
            return 0.0
        span = max(now - self._marks[0][0], 1e-3)
        return sum(c for _, c in self._marks) / max(span, min(self.window_s, 1.0))

    def _trim(self, now: float) -> None:
        while self._marks and now - self._marks[0][0] > self.window_s:
            self._marks.popleft()


class WorkerMetrics:
    """The metric families a worker exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "driftline_events", "Events applied to model state", ["service", "topic"], registry=r
        )
        self.events_per_second = Gauge(
            "driftline_events_per_second", "Events applied per second (10 s window)", ["service"], registry=r
        )
        self.dead_letters = Counter(
            "driftline_dead_letters", "Events sent to the dead-letter topic", ["service", "topic"], registry=r
        )
        self.lag = Gauge(
            "driftline_consumer_lag",
            "Events on the partition not yet applied (0 when caught up)",
            ["service", "topic", "partition"],
            registry=r,
        )
        self.last_batch = Gauge(
            "driftline_last_batch_timestamp_seconds",
            "When the service last applied a batch (epoch seconds)",
            ["service"],
            registry=r,
        )
        self.checkpoint_bytes = Counter(
            "driftline_checkpoint_bytes", "Bytes written by checkpoints", ["service"], registry=r
        )
        self.checkpoint_failures = Counter(
            "driftline_checkpoint_failures", "Checkpoints that could not be written", ["service"], registry=r
        )
        self.model_version = Gauge(
            "driftline_model_version", "Serving model version", ["service"], registry=r
        )
        self.online_metric = Gauge(
            "driftline_online_metric",
            "Progressive (test-then-train) metric of the last batch, e.g. loss, mse, auc",
            ["service", "metric"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "driftline_batch_seconds",
            "Time to apply one micro-batch (model update, outputs, checkpoint)",
            ["service"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.checkpoint_version = Gauge(
            "driftline_checkpoint_version", "Last worker checkpoint written", ["service"], registry=r
        )
        self.drift_alarms = Gauge(
            "driftline_drift_alarms_total",
            "Drift alarms raised on the service's online error (held in its checkpointed state)",
            ["service"],
            registry=r,
        )
        self.drift_in_alarm = Gauge(
            "driftline_drift_in_alarm",
            "1 while the service's last drift alarm is recent",
            ["service"],
            registry=r,
        )
        self._rates: dict[str, RateWindow] = {}

    def applied(self, service: str, topic: str, count: int) -> None:
        self.events.labels(service, topic).inc(count)
        self._rates.setdefault(service, RateWindow()).add(count)

    def forget_partition(self, service: str, topic: str, partition: int) -> None:
        """Drop the per-partition series of a partition this worker no longer owns."""
        with contextlib.suppress(KeyError):
            self.lag.remove(service, topic, str(partition))

    def render(self) -> bytes:
        for service, window in self._rates.items():
            self.events_per_second.labels(service).set(window.rate())
        return generate_latest(self.registry)
