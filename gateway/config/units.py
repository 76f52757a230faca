"""Human units used throughout the config: durations, sizes and rates."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d|w)\s*$")

# SI prefixes are powers of 1000 and IEC prefixes powers of 1024, as their standards say.
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")

# Fixed-length periods a rate may be measured over. "month" is the calendar month and is
# only meaningful for quotas, so it has no fixed length here.
_PERIOD_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "month": None,
}
_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")

DURATION_HINT = "a duration such as '250ms', '30s', '5min', '1h' or '7d'"
SIZE_HINT = "a size such as '512B', '64KB', '10MB' or '1GiB'"
RATE_HINT = "a rate such as '1/s', '100/min', '5000/day' or '2000000/month'"
PRICE_HINT = "a price such as \"0.05\" (quoted, so it is read as a decimal and never as a binary float)"
_PRICE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
# Any decimal of at most 15 significant digits survives YAML's float and back unchanged.
_EXACT_FLOAT_DIGITS = 15


def parse_duration(value: object) -> float:
    """Parse '250ms', '30s', '1h', ... into seconds."""
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f"expected {DURATION_HINT}, got {value!r}")


def parse_size(value: object) -> int:
    """Parse '10MB', '64KiB', ... (or a plain byte count) into bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    raise ValueError(f"expected {SIZE_HINT}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` events per `period`; `period_seconds` is None for calendar months."""

    count: int
    period: str
    period_seconds: float | None

    @property
    def per_second(self) -> float:
        if self.period_seconds is None:
            raise ValueError("a monthly rate has no fixed length")
        return self.count / self.period_seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.period}"


@dataclass(frozen=True, slots=True)
class FixedRate(Rate):
    """A Rate of a fixed period, as a token bucket needs (no calendar months)."""

    period_seconds: float


def parse_fixed_rate(value: object) -> FixedRate:
    """Parse a Rate, refusing calendar months."""
    rate = parse_rate(value)
    if rate.period_seconds is None:
        raise ValueError("a token bucket needs a fixed period (use a quota for months)")
    return FixedRate(rate.count, rate.period, rate.period_seconds)


def parse_rate(value: object) -> Rate:
    """Parse '1/s', '100/min', '10/5s', '2000000/month' into a Rate."""
    if isinstance(value, str):
        match = _RATE_RE.match(value.lower())
        if match and match.group(3) in _PERIOD_SECONDS:
            count = int(match.group(1))
            multiple = float(match.group(2)) if match.group(2) else 1.0
            unit_seconds = _PERIOD_SECONDS[match.group(3)]
            if count > 0 and multiple > 0:
                if unit_seconds is None:
                    if multiple == 1.0:
                        return Rate(count, "month", None)
                else:
                    period = f"{match.group(2)}{match.group(3)}" if match.group(2) else match.group(3)
                    return Rate(count, period, unit_seconds * multiple)
    raise ValueError(f"expected {RATE_HINT}, got {value!r}")


def parse_price(value: object) -> Decimal:
    """'0.05' -> Decimal('0.05'); an unquoted 0.05 too, unless YAML's binary float lost digits of it."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        text = repr(value)
        if len(Decimal(text).as_tuple().digits) <= _EXACT_FLOAT_DIGITS:
            return Decimal(text)
        raise ValueError(f"{value!r} has more digits than a YAML number keeps exactly; write {PRICE_HINT}")
    if isinstance(value, str):
        match = _PRICE_RE.match(value)
        if match:
            return Decimal(match.group(1))
    raise ValueError(f"expected {PRICE_HINT}, got {value!r}")
