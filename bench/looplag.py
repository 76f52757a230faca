"""`fairgate_event_loop_lag_seconds` read from a gateway's /metrics before and after a run:
the difference of the two cumulative histograms is what the probe saw during the run. A
histogram only knows buckets, so the max and p99 are reported as the bucket bound they fall
under (e.g. "<= 2.5 ms")."""

from __future__ import annotations

import math
import re
import urllib.request
from dataclasses import dataclass

_BUCKET = re.compile(r'^fairgate_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)$', re.MULTILINE)

Histogram = dict[float, float]  # upper bound -> cumulative count


@dataclass(frozen=True)
class Lag:
    samples: int
    p99_upper_ms: float  # the bucket bound under which 99% of the probe's wake-ups fell
    max_lower_ms: float  # the worst wake-up was above this bound ...
    max_upper_ms: float  # ... and at most this one (inf past the last bucket)

    def text(self) -> str:
        if not self.samples:
            return "no samples"
        return f"max {self.max_lower_ms:g}-{self.max_upper_ms:g} ms, p99 <= {self.p99_upper_ms:g} ms"


_BATCH_BUCKET = re.compile(
    r'^fairgate_background_batch_seconds_bucket\{batch="([^"]+)",le="([^"]+)"\} ([\d.e+]+)$', re.MULTILINE)


def scrape(admin_port: int | None) -> str | None:
    if admin_port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def read(admin_port: int | None) -> Histogram | None:
    text = scrape(admin_port)
    return None if text is None else parse(text)


def parse(metrics_text: str) -> Histogram:
    return {float(bound): float(count) for bound, count in _BUCKET.findall(metrics_text)}


def parse_batches(metrics_text: str) -> dict[str, Histogram]:
    """`fairgate_background_batch_seconds` by batch, when the gateway exports it: how long each
    step of a background batch (a table sweep, a detection batch...) held the loop."""
    batches: dict[str, Histogram] = {}
    for batch, bound, count in _BATCH_BUCKET.findall(metrics_text):
        batches.setdefault(batch, {})[float(bound)] = float(count)
    return batches


def during(before: Histogram | None, after: Histogram | None) -> Lag | None:
    if before is None or not after:
        return None
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative
    total = counts[-1]
    if total <= 0:
        return Lag(0, math.nan, math.nan, math.nan)
    p99 = next(b for b, c in zip(bounds, counts, strict=True) if c >= 0.99 * total)
    top = next(i for i, c in enumerate(counts) if c >= total)
    lower = bounds[top - 1] if top else 0.0
    return Lag(int(total), p99 * 1000, lower * 1000, bounds[top] * 1000)


def worst(lags: list[Lag | None]) -> Lag | None:
    seen = [lag for lag in lags if lag is not None and lag.samples]
    return max(seen, key=lambda lag: (lag.max_upper_ms, lag.p99_upper_ms)) if seen else None
