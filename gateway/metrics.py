"""Prometheus metrics of one gateway process (its own registry, so tests can run several).

Per-request numbers are kept as plain integers and turned into metric families only when
/metrics is scraped: the request path pays for an add, not for a labelled, locked metric.
"""

from __future__ import annotations

import gc
import platform
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sized
from typing import Protocol

import aiohttp
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway import __version__

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class DetectionGauges(Protocol):
    """What the detection engine shows at scrape time (metrics sits below detect, so it names no class)."""

    @property
    def dropped(self) -> int: ...
    @property
    def backlog(self) -> int: ...
    @property
    def sanctions(self) -> Sized: ...
    @property
    def worker_starts(self) -> int: ...


class LookupCounts(Protocol):
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...


class PoolGauges(Protocol):
    @property
    def open_connections(self) -> int: ...
    @property
    def idle_connections(self) -> int: ...


class GateGauges(Protocol):
    @property
    def in_flight(self) -> int: ...
    @property
    def anonymous_in_flight(self) -> int: ...


class UpstreamGauges(Protocol):
    """The current runtime's upstream parts, as the scrape reads them."""

    @property
    def pools(self) -> Mapping[str, PoolGauges]: ...
    @property
    def gates(self) -> Mapping[str, GateGauges]: ...


class TableCounts(Protocol):
    """One bounded per-key table, as the scrape reads it."""

    @property
    def limit(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def expirations(self) -> int: ...
    def __len__(self) -> int: ...


class TableSource(Protocol):
    def counts(self) -> Iterator[tuple[str, TableCounts]]: ...


class CurrentRuntime(Protocol):
    @property
    def current(self) -> UpstreamGauges: ...


# The *_created series double the output and no dashboard reads them.
disable_created_metrics()

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CODES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# A probe wakes every 100 ms (gateway/server/loop_lag.py); anything past 100 ms stalled every request.
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Background batches are meant to hold the loop for under 2 ms at a time.
_BATCH_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5)
# A young collection can take under a millisecond; a full one of 200k customers' state, seconds.
_GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


# A status's index in _CODES by its hundreds, for 0-599 (the request path indexes it inline).
_CODE_CLASSES = (0, 0, 1, 2, 3, 4)


def _code_class(status: int) -> int:
    return min(max(status // 100, 1), 5) - 1


class _Timings:
    """A histogram as plain counts: the request path adds, the scrape sums up."""

    __slots__ = ("bucket_counts", "duration_sum")

    def __init__(self) -> None:
        self.bucket_counts = [0] * (len(_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.bucket_counts[bisect_left(_BUCKETS, seconds)] += 1
        self.duration_sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        total, buckets = 0, []
        for bound, count in zip((*_BUCKETS, float("inf")), self.bucket_counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets


class _RouteStats(_Timings):
    __slots__ = ("by_code",)

    def __init__(self) -> None:
        super().__init__()
        self.by_code = [0] * len(_CODES)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.in_flight = 0
        self._routes: dict[str, _RouteStats] = {}
        self._upstreams: dict[tuple[str, int], _Timings] = {}  # (upstream, status class)
        self.registry.register(_RequestCollector(self))
        self.registry.register(_BuildInfo())
        # A registry of our own starts empty: the default one's process, GC and platform
        # collectors are what dashboards expect (process_*, python_gc_*, python_info).
        for collector in (PROCESS_COLLECTOR, GC_COLLECTOR, PLATFORM_COLLECTOR):
            self.registry.register(collector)
        self.loop_lag = Histogram(
            "fairgate_event_loop_lag_seconds",
            "How late the event loop woke a probe due every 100 ms: time the loop was blocked.",
            registry=self.registry, buckets=_LAG_BUCKETS,
        )
        self.gc_pauses = GcPauses()
        self.registry.register(_GcCollector(self.gc_pauses))
        self.batch_seconds = Histogram(
            "fairgate_background_batch_seconds",
            "How long one step of a background batch held the event loop, by batch (table_sweep, ...).",
            ["batch"], registry=self.registry, buckets=_BATCH_BUCKETS,
        )
        self.upstream_errors = Counter(
            "fairgate_upstream_errors", "Failed upstream exchanges, by upstream and kind.", ["upstream", "kind"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "fairgate_rejections", "Requests the gateway answered itself, by reason.", ["reason"],
            registry=self.registry,
        )
        # Reasons are the gateway's own slugs (a few dozen), so this stays small.
        self._rejection_children: dict[str, Counter] = {}
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
        self.challenges = Counter(
            "fairgate_challenges", "Challenge interstitials issued, passes accepted (first use) and passes refused.",
            ["result"], registry=self.registry,
        )
        self.findings = Counter(
            "fairgate_findings", "Policy findings, by detector and action.", ["detector", "action"],
            registry=self.registry,
        )

        self.browser_proofs = Counter(
            "fairgate_browser_proofs", "Browser-proof links fetched, by result (credited, expired, forged, "
            "wrong_identity, replayed).", ["result"], registry=self.registry,
        )
        self.proof_pages = Counter(
            "fairgate_proof_pages", "HTML pages offered a browser-proof link, by result (injected, no_head, "
            "compressed, no_transform).", ["result"], registry=self.registry,
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
        self.audit_write_failures = Counter(
            "fairgate_audit_write_failures", "Appends to the audit file that failed; their events stay queued.",
            registry=self.registry,
        )

    def watch_detection(self, detection: DetectionGauges) -> None:
        """Export the detectors' backlog, drops and sanctions (read at scrape time)."""
        self.registry.register(_DetectionCollector(detection))

    def watch_token_cache(self, counts: LookupCounts) -> None:
        """Export the verified-token cache's hits and misses (read at scrape time)."""
        self.registry.register(_TokenCacheCollector(counts))

    def watch_tables(self, tables: TableSource) -> None:
        """Export each per-key table's entries, bound, evictions and expirations (read at scrape time)."""
        self.registry.register(_TableCollector(tables))

    def watch_upstreams(self, runtimes: CurrentRuntime) -> None:
        """Export each upstream's pooled connections and requests in flight (read at scrape time)."""
        self.registry.register(_UpstreamCollector(runtimes))

    def observe(self, route: str, status: int, seconds: float) -> None:
        # Every request comes here: the histogram's add is written out, not a call.
        stats = self._routes.get(route)
        if stats is None:
            stats = self._routes[route] = _RouteStats()
        stats.by_code[_CODE_CLASSES[status // 100] if 0 <= status < 600 else _code_class(status)] += 1
        stats.bucket_counts[bisect_left(_BUCKETS, seconds)] += 1
        stats.duration_sum += seconds

    def observe_upstream(self, upstream: str, status: int, seconds: float) -> None:
        """One upstream answer: `seconds` from sending the request to its response headers."""
        key = (upstream, _CODE_CLASSES[status // 100] if 0 <= status < 600 else _code_class(status))
        timings = self._upstreams.get(key)
        if timings is None:
            timings = self._upstreams[key] = _Timings()
        timings.bucket_counts[bisect_left(_BUCKETS, seconds)] += 1
        timings.duration_sum += seconds

    def rejected(self, reason: str) -> None:
        """A request the gateway answered itself: the labelled child is looked up once per reason."""
        child = self._rejection_children.get(reason)
        if child is None:
            child = self._rejection_children[reason] = self.rejections.labels(reason)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "fairgate_requests", "Requests answered, by route and status class.", labels=["route", "code"]
        )
        duration = HistogramMetricFamily(
            "fairgate_request_duration_seconds", "Time from request to response, by route.", labels=["route"]
        )
        upstream = HistogramMetricFamily(
            "fairgate_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, by upstream and status class.",
            labels=["upstream", "code"],
        )
        for route, stats in list(self._metrics._routes.items()):
            for code, count in zip(_CODES, stats.by_code, strict=True):
                requests.add_metric([route, code], count)
            duration.add_metric([route], stats.cumulative(), stats.duration_sum)
        for (name, code_class), timings in list(self._metrics._upstreams.items()):
            upstream.add_metric([name, _CODES[code_class]], timings.cumulative(), timings.duration_sum)
        yield requests
        yield duration
        yield upstream
        yield GaugeMetricFamily("fairgate_in_flight_requests", "Requests being proxied now.",
                                value=self._metrics.in_flight)


class GcPauses:
    """Garbage-collection pauses as plain counts by generation. Not a prometheus Histogram: its
    lock is not reentrant, and a collection can start while a scrape holds it."""

    __slots__ = ("bucket_counts", "duration_sums")

    def __init__(self) -> None:
        self.bucket_counts = [[0] * (len(_GC_BUCKETS) + 1) for _ in range(3)]  # the last one is +Inf
        self.duration_sums = [0.0, 0.0, 0.0]

    def observe(self, generation: int, seconds: float) -> None:
        self.bucket_counts[generation][bisect_left(_GC_BUCKETS, seconds)] += 1
        self.duration_sums[generation] += seconds

    def cumulative(self, generation: int) -> list[tuple[str, int]]:
        total, buckets = 0, []
        for bound, count in zip((*_GC_BUCKETS, float("inf")), self.bucket_counts[generation], strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets


class _GcCollector(Collector):
    """Pauses, and the collector's tuning as the process has it now (server.gc applies it after start-up)."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    def collect(self) -> Iterator[Metric]:
        pauses = HistogramMetricFamily("fairgate_gc_pause_seconds",
                                       "How long one garbage collection held the process, by generation.",
                                       labels=["generation"])
        for generation in range(3):
            pauses.add_metric([str(generation)], self._pauses.cumulative(generation),
                              self._pauses.duration_sums[generation])
        yield pauses
        yield GaugeMetricFamily("fairgate_gc_frozen_objects",
                                "Objects moved out of the collector's view by gc.freeze() (server.gc).",
                                value=gc.get_freeze_count())
        thresholds = GaugeMetricFamily("fairgate_gc_threshold", "The collector's thresholds, by generation.",
                                       labels=["generation"])
        for generation, threshold in enumerate(gc.get_threshold()):
            thresholds.add_metric([str(generation)], threshold)
        yield thresholds


class _BuildInfo(Collector):
    def __init__(self) -> None:
        self._labels = [__version__, platform.python_version(), aiohttp.__version__]

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("fairgate_build_info", "Always 1; the labels say what is running.",
                                 labels=["version", "python", "aiohttp"])
        info.add_metric(self._labels, 1)
        yield info


class _UpstreamCollector(Collector):
    """What each upstream holds now: with no traffic, no busy connection and nothing in flight
    (an aborted upload or a stalled client that left something behind shows here)."""

    def __init__(self, runtimes: CurrentRuntime) -> None:
        self._runtimes = runtimes

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtimes.current
        connections = GaugeMetricFamily("fairgate_upstream_connections", "Pooled upstream connections, by state.",
                                        labels=["upstream", "state"])
        for name, pool in runtime.pools.items():
            idle = pool.idle_connections
            connections.add_metric([name, "busy"], pool.open_connections - idle)
            connections.add_metric([name, "idle"], idle)
        in_flight = GaugeMetricFamily("fairgate_upstream_in_flight_requests",
                                      "Requests holding an upstream's max_in_flight, by caller (logged_in, anonymous).",
                                      labels=["upstream", "caller"])
        for name, gate in runtime.gates.items():
            in_flight.add_metric([name, "logged_in"], gate.in_flight - gate.anonymous_in_flight)
            in_flight.add_metric([name, "anonymous"], gate.anonymous_in_flight)
        yield connections
        yield in_flight


class _DetectionCollector(Collector):
    def __init__(self, detection: DetectionGauges) -> None:
        self._detection = detection

    def collect(self) -> Iterator[Metric]:
        detection = self._detection
        yield CounterMetricFamily("fairgate_detection_dropped_observations",
                                  "Requests not analysed because the detectors fell behind (queue full).",
                                  value=detection.dropped)
        yield GaugeMetricFamily("fairgate_detection_queue", "Requests waiting for analysis.",
                                value=detection.backlog)
        yield GaugeMetricFamily("fairgate_sanctions", "Blocks and re-logins in force in this process.",
                                value=len(detection.sanctions))
        yield CounterMetricFamily("fairgate_detection_worker_starts",
                                  "Detection worker processes started (detection.worker); more than one: "
                                  "a worker died or hung and was replaced, with its detection state.",
                                  value=detection.worker_starts)


class _TableCollector(Collector):
    def __init__(self, tables: TableSource) -> None:
        self._tables = tables

    def collect(self) -> Iterator[Metric]:
        entries = GaugeMetricFamily("fairgate_table_entries", "Entries a per-key table holds now, by table.",
                                    labels=["table"])
        limits = GaugeMetricFamily("fairgate_table_limit", "Entries a per-key table holds at most, by table.",
                                   labels=["table"])
        evictions = CounterMetricFamily(
            "fairgate_table_evictions", "Entries pushed out of a full table by newer ones (the bound is too small "
            "for the load when this grows), by table.", labels=["table"])
        expirations = CounterMetricFamily(
            "fairgate_table_expirations", "Entries the background sweep forgot as idle or ended, by table.",
            labels=["table"])
        for name, table in self._tables.counts():
            entries.add_metric([name], len(table))
            limits.add_metric([name], table.limit)
            evictions.add_metric([name], table.evictions)
            expirations.add_metric([name], table.expirations)
        yield entries
        yield limits
        yield evictions
        yield expirations


class _TokenCacheCollector(Collector):
    def __init__(self, counts: LookupCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily("fairgate_token_cache_lookups",
                                      "Bearer tokens looked up in the verified-token cache, by result (hit, miss).",
                                      labels=["result"])
        lookups.add_metric(["hit"], self._counts.hits)
        lookups.add_metric(["miss"], self._counts.misses)
        yield lookups
