"""Prometheus metrics of one gateway process (its own registry, so tests can run several).

Per-request numbers are kept as plain integers and turned into metric families only when
/metrics is scraped: the request path pays for an add, not for a labelled, locked metric.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class _RouteStats:
    __slots__ = ("by_code", "bucket_counts", "duration_sum")

    def __init__(self) -> None:
        self.by_code = [0] * len(_CODES)
        self.bucket_counts = [0] * (len(_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0
        self._routes: dict[str, _RouteStats] = {}
        self.registry.register(_RequestCollector(self))
        self.upstream_errors = Counter(
            "fairgate_upstream_errors", "Failed upstream exchanges, by upstream and kind.", ["upstream", "kind"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "fairgate_rejections", "Requests the gateway answered itself, by reason.", ["reason"],
            registry=self.registry,
        )
        self.config_reloads = Counter(
            "fairgate_config_reloads", "Config reload attempts, by result.", ["result"], registry=self.registry
        )
        self.config_last_reload_success = Gauge(
            "fairgate_config_last_reload_successful", "1 if the last reload succeeded.", registry=self.registry
        )
        self.config_last_reload_success.set(1)
        self.auth_results = Counter(
            "fairgate_auth_results", "Logins checked (cache misses and rejections), by result.", ["result"],
            registry=self.registry,
        )
        self.state_latency = Histogram(
            "fairgate_state_store_seconds", "Round-trip time of one state-store batch.", registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        )
        self.state_errors = Counter(
            "fairgate_state_store_errors", "Failed state-store calls, by error.", ["kind"], registry=self.registry
        )
        self.state_circuit = Gauge(
            "fairgate_state_store_circuit", "1 for the circuit breaker's current state.", ["state"],
            registry=self.registry,
        )
        self.state_fallbacks = Counter(
            "fairgate_state_store_fallbacks", "Decisions made without the shared store, by failure mode.", ["mode"],
            registry=self.registry,
        )
        self.findings = Counter(
            "fairgate_findings", "Policy findings, by detector and action.", ["detector", "action"],
            registry=self.registry,
        )

        self.transitions = Counter(
            "fairgate_enforcement_transitions", "Fair-use standings decided, by the state entered.", ["state"],
            registry=self.registry,
        )
        self.audit_written = Counter(
            "fairgate_audit_events_written", "Audit events appended to the audit file.", registry=self.registry
        )
        self.alerts = Counter(
            "fairgate_alerts", "Webhook alerts, by webhook and result (sent, failed, held_back, dropped).",
            ["webhook", "result"], registry=self.registry,
        )
        self.audit_dropped = Counter(
            "fairgate_audit_events_dropped", "Audit events dropped because the queue was full.", registry=self.registry
        )

    def watch_detection(self, detection) -> None:
        """Export the detectors' backlog, drops and sanctions (read at scrape time)."""
        self.registry.register(_DetectionCollector(detection))

    def watch_token_cache(self, counts) -> None:
        """Export the verified-token cache's hits and misses (read at scrape time)."""
        self.registry.register(_TokenCacheCollector(counts))

    def observe(self, route: str, status: int, seconds: float) -> None:
        stats = self._routes.get(route)
        if stats is None:
            stats = self._routes[route] = _RouteStats()
        stats.by_code[min(max(status // 100, 1), 5) - 1] += 1
        stats.bucket_counts[bisect_left(_BUCKETS, seconds)] += 1
        stats.duration_sum += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator:
        requests = CounterMetricFamily(
            "fairgate_requests", "Requests answered, by route and status class.", labels=["route", "code"]
        )
        duration = HistogramMetricFamily(
            "fairgate_request_duration_seconds", "Time from request to response, by route.", labels=["route"]
        )
        for route, stats in list(self._metrics._routes.items()):
            for code, count in zip(_CODES, stats.by_code):
                requests.add_metric([route, code], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*_BUCKETS, float("inf")), stats.bucket_counts):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            duration.add_metric([route], buckets, stats.duration_sum)
        yield requests
        yield duration
        yield GaugeMetricFamily("fairgate_in_flight_requests", "Requests being proxied now.", value=self._metrics.in_flight)


class _DetectionCollector(Collector):
    def __init__(self, detection) -> None:
        self._detection = detection

    def collect(self) -> Iterator:
        detection = self._detection
        yield CounterMetricFamily("fairgate_detection_dropped_observations",
                                  "Requests not analysed because the detectors fell behind (queue full).",
                                  value=detection.dropped)
        yield GaugeMetricFamily("fairgate_detection_queue", "Requests waiting for analysis.",
                                value=detection.backlog)
        yield GaugeMetricFamily("fairgate_sanctions", "Blocks and re-logins in force in this process.",
                                value=len(detection.sanctions))


class _TokenCacheCollector(Collector):
    def __init__(self, counts) -> None:
        self._counts = counts

    def collect(self) -> Iterator:
        lookups = CounterMetricFamily("fairgate_token_cache_lookups",
                                      "Bearer tokens looked up in the verified-token cache, by result (hit, miss).",
                                      labels=["result"])
        lookups.add_metric(["hit"], self._counts.hits)
        lookups.add_metric(["miss"], self._counts.misses)
        yield lookups
