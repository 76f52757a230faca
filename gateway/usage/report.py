"""The monthly usage report: each customer's usage against its plan's quotas, overage marked
(the policy's "additional fees"). Rows are plain JSON-ready dicts: the admin API serves them
and `fairgate usage` formats them as a table, CSV or JSON."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

from gateway.config import GatewayConfig
from gateway.limits.policy import licensed_quantity
from gateway.usage.fees import fee_total, overage_fee

METRICS = ("requests", "units", "bytes_in", "bytes_out", "upstream_seconds")


def build_report(month: str, stored: dict[str, dict[str, float]], config: GatewayConfig,
                 customer: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(stored):
        if customer is not None and name != customer:
            continue
        rows.append(_row(month, name, stored[name], config))
    return rows


def month_plan(plans: dict[str, int]) -> str | None:
    """The plan most of a month's requests were limited under (a token's plan claim may choose
    it, so the config alone does not know); None when nothing was recorded."""
    return max(sorted(plans), key=plans.__getitem__) if plans else None


def _row(month: str, customer: str, amounts: dict[str, float], config: GatewayConfig) -> dict[str, Any]:
    days: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    rejected: dict[str, int] = defaultdict(int)
    findings: dict[str, int] = defaultdict(int)
    claimed: dict[str, int] = {}
    plans: dict[str, int] = defaultdict(int)  # requests per plan they were limited under
    for field, amount in amounts.items():
        day, _, metric = field.partition(":")
        if metric.startswith("licenses:"):
            # requests per claimed quantity ("licenses:ports:12"); the month counts at its largest
            unit, _, count = metric.removeprefix("licenses:").rpartition(":")
            if count.isdigit():
                claimed[unit] = max(claimed.get(unit, 0), int(count))
        elif metric.startswith("plans:"):
            plans[metric.removeprefix("plans:")] += int(amount)
        elif metric.startswith("rejected:"):
            rejected[metric.removeprefix("rejected:")] += int(amount)
        elif metric.startswith("findings:"):
            findings[metric.removeprefix("findings:")] += int(amount)
        else:
            days[day][metric] += amount
            totals[metric] += amount
    entry = config.customers.get(customer)
    plan = month_plan(plans) or config.plan_of(customer)
    listed = entry.licenses if entry is not None else {}
    quotas, fees = [], []
    for limit in config.plans[plan].limits if plan in config.plans else ():
        if limit.kind != "quota":
            continue
        quantity = licensed_quantity(limit.per, listed, tuple(claimed.items())) if limit.per else 1
        budget = limit.limit * quantity
        used_by_day = {day: _metered(limit.metric, values) for day, values in days.items()}
        if limit.period == "month":
            used = _metered(limit.metric, totals)
            over_days = None
            billed_over = max(0.0, used - budget)
        else:
            used = max(used_by_day.values(), default=0.0)
            over_days = sorted(f"{month}-{day}" for day, value in used_by_day.items() if value > budget)
            billed_over = sum(max(0.0, value - budget) for value in used_by_day.values())
        quota: dict[str, Any] = {"limit": limit.name, "metric": limit.metric, "period": limit.period,
                                 "quota": budget, "used": used, "over": max(0.0, used - budget),
                                 "action": limit.action, **({"days_over": over_days} if over_days is not None else {})}
        if limit.per:
            source = "config" if limit.per in listed else "token" if limit.per in claimed else "default"
            quota.update(per=limit.per, quantity=quantity, quota_per_unit=limit.limit, quantity_from=source)
        if limit.overage is not None:
            fee = overage_fee(limit.overage, limit.metric, billed_over)
            fees.append((limit.overage.currency, fee))
            quota.update(billed_over=billed_over, price=str(limit.overage.price), price_unit=str(limit.overage.unit),
                         currency=limit.overage.currency, fee=str(fee))
        quotas.append(quota)
    return {
        "customer": customer, "plan": plan, "month": month,
        **{metric: _number(totals.get(metric, 0.0)) for metric in METRICS},
        "rejected": dict(sorted(rejected.items())), "findings": dict(sorted(findings.items())),
        "quotas": quotas, "over": any(q["over"] > 0 for q in quotas), "fees": fee_total(fees),
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
    writer.writerow(["customer", "plan", "month", *METRICS, "rejected", "findings", "over", "quotas", "fees"])
    for row in rows:
        writer.writerow([row["customer"], row["plan"], row["month"], *(row[m] for m in METRICS),
                         _pairs(row["rejected"]), _pairs(row["findings"]), "OVER" if row["over"] else "",
                         "; ".join(_quota_text(q) for q in row["quotas"]), _fees_text(row["fees"])])
    return out.getvalue()


def as_table(rows: list[dict[str, Any]]) -> str:
    header = ["customer", "plan", "requests", "bytes in", "bytes out", "upstream s", "rejected", "findings", "quotas",
              "fees"]
    lines = [[row["customer"], str(row["plan"]), f"{row['requests']:,}", f"{row['bytes_in']:,}",
              f"{row['bytes_out']:,}", f"{row['upstream_seconds']:,.1f}", _pairs(row["rejected"]) or "-",
              _pairs(row["findings"]) or "-", "; ".join(_quota_text(q) for q in row["quotas"]) or "-",
              _fees_text(row["fees"]) or "-"]
             for row in rows]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    render = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
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
    if "per" in quota:
        text += f" ({_amount(quota['quota_per_unit'])}{unit} x {quota['quantity']} {quota['per']})"
    if quota["over"] > 0:
        text += f" OVER by {_amount(quota['over'])}{unit}"
        if quota.get("days_over"):
            text += f" on {len(quota['days_over'])} day(s)"
    if quota.get("fee") not in (None, "0.00"):
        text += f" fee {quota['fee']} {quota['currency']}"
    return text


def _fees_text(fees: dict[str, str]) -> str:
    return " + ".join(f"{amount} {currency}" for currency, amount in fees.items())
