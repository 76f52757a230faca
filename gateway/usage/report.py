"""The monthly usage report: each customer's usage against its plan's quotas, overage marked
(the policy's "additional fees"). Rows are plain JSON-ready dicts: the admin API serves them
and `fairgate usage` formats them as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from gateway.config import GatewayConfig

METRICS = ("requests", "units", "bytes_in", "bytes_out", "upstream_seconds")


def build_report(month: str, stored: dict[str, dict[str, float]], config: GatewayConfig,
                 customer: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(stored):
        if customer is not None and name != customer:
            continue
        rows.append(_row(month, name, stored[name], config))
    return rows


def _row(month: str, customer: str, amounts: dict[str, float], config: GatewayConfig) -> dict[str, Any]:
    days: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    rejected: dict[str, int] = defaultdict(int)
    findings: dict[str, int] = defaultdict(int)
    for field, amount in amounts.items():
        day, _, metric = field.partition(":")
        if metric.startswith("rejected:"):
            rejected[metric.removeprefix("rejected:")] += int(amount)
        elif metric.startswith("findings:"):
            findings[metric.removeprefix("findings:")] += int(amount)
        else:
            days[day][metric] += amount
            totals[metric] += amount
    entry = config.customers.get(customer)
    plan = entry.plan if entry is not None else config.limits.default_plan
    quotas = []
    for limit in config.plans[plan].limits if plan in config.plans else ():
        if limit.kind != "quota":
            continue
        used_by_day = {day: _metered(limit.metric, values) for day, values in days.items()}
        if limit.period == "month":
            used = _metered(limit.metric, totals)
            over_days = None
        else:
            used = max(used_by_day.values(), default=0.0)
            over_days = sorted(f"{month}-{day}" for day, value in used_by_day.items() if value > limit.limit)
        quotas.append({"limit": limit.name, "metric": limit.metric, "period": limit.period, "quota": limit.limit,
                       "used": used, "over": max(0.0, used - limit.limit), "action": limit.action,
                       **({"days_over": over_days} if over_days is not None else {})})
    return {
        "customer": customer, "plan": plan, "month": month,
        **{metric: _number(totals.get(metric, 0.0)) for metric in METRICS},
        "rejected": dict(sorted(rejected.items())), "findings": dict(sorted(findings.items())),
        "quotas": quotas, "over": any(q["over"] > 0 for q in quotas),
        "days": {f"{month}-{day}": {m: _number(v) for m, v in sorted(values.items())}
                 for day, values in sorted(days.items())},
    }


def _metered(metric: str, values: dict[str, float]) -> float:
    """A quota's metric from metered usage: requests count route cost units, as the limit does."""
    if metric == "requests":
        return values.get("units", 0.0)
    if metric == "bytes":
        return values.get("bytes_in", 0.0) + values.get("bytes_out", 0.0)
    return values.get("upstream_seconds", 0.0)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def as_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["customer", "plan", "month", *METRICS, "rejected", "findings", "over", "quotas"])
    for row in rows:
        writer.writerow([row["customer"], row["plan"], row["month"], *(row[m] for m in METRICS),
                         _pairs(row["rejected"]), _pairs(row["findings"]), "OVER" if row["over"] else "",
                         "; ".join(_quota_text(q) for q in row["quotas"])])
    return out.getvalue()


def as_table(rows: list[dict[str, Any]]) -> str:
    header = ["customer", "plan", "requests", "bytes in", "bytes out", "upstream s", "rejected", "findings", "quotas"]
    lines = [[row["customer"], str(row["plan"]), f"{row['requests']:,}", f"{row['bytes_in']:,}",
              f"{row['bytes_out']:,}", f"{row['upstream_seconds']:,.1f}", _pairs(row["rejected"]) or "-",
              _pairs(row["findings"]) or "-", "; ".join(_quota_text(q) for q in row["quotas"]) or "-"]
             for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
              for line in [header, *lines]]
    return "\n".join(render) + "\n"


def _amount(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.2f}"


def _pairs(counts: dict[str, int]) -> str:
    return " ".join(f"{name}={count}" for name, count in counts.items())


_UNITS = {"requests": "", "bytes": " B", "upstream_seconds": " s"}


def _quota_text(quota: dict[str, Any]) -> str:
    unit = _UNITS.get(quota["metric"], "")
    text = f"{quota['limit']} {_amount(quota['used'])}/{_amount(quota['quota'])}{unit}"
    if quota["over"] > 0:
        text += f" OVER by {_amount(quota['over'])}{unit}"
        if quota.get("days_over"):
            text += f" on {len(quota['days_over'])} day(s)"
    return text
