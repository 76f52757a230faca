"""Estimated additional fees for usage beyond a quota (the policies' "additional fees"), in
decimal arithmetic from the config's decimal prices, rounded half up to the cent; and the CSV
an invoicing system takes: one line per customer, month and priced quota, stable columns."""

from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gateway.config.limits import Overage

CENT = Decimal("0.01")
FEE_COLUMNS = ("month", "customer", "plan", "limit", "metric", "per", "quantity", "quota", "used", "over",
               "price", "price_unit", "currency", "fee")


def overage_fee(overage: Overage, metric: str, over: float) -> Decimal:
    """`over` metric units at `overage.price` per `overage.unit`: proportional, to the cent."""
    if over <= 0:
        return Decimal("0.00")
    # repr is the shortest text that reads back as the same float: the metered amount, not its binary noise.
    amount = Decimal(repr(float(over)))
    return (amount / overage.unit_amount(metric) * overage.price).quantize(CENT, rounding=ROUND_HALF_UP)


def fee_total(fees: list[tuple[str, Decimal]]) -> dict[str, str]:
    """Fees summed per currency, as decimal strings (JSON has no decimal type)."""
    totals: dict[str, Decimal] = {}
    for currency, fee in fees:
        totals[currency] = totals.get(currency, Decimal("0.00")) + fee
    return {currency: str(total) for currency, total in sorted(totals.items())}


def as_fees_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FEE_COLUMNS)
    for row in rows:
        for quota in row["quotas"]:
            if "fee" not in quota:
                continue
            writer.writerow([row["month"], row["customer"], row["plan"], quota["limit"], quota["metric"],
                             quota.get("per", ""), quota.get("quantity", ""), _plain(quota["quota"]),
                             _plain(quota["used"]), _plain(quota["billed_over"]), quota["price"], quota["price_unit"],
                             quota["currency"], quota["fee"]])
    return out.getvalue()


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(round(float(value), 6))
