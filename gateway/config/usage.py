"""The `usage` section: metering per customer and day, for reports and "additional fees"."""

from __future__ import annotations

from pydantic import Field

from gateway.config.types import Duration, Section


class UsageSettings(Section):
    enabled: bool = Field(True, description="Meter requests, bytes, upstream time, rejections and findings per "
                                            "customer and day (in limits.time_zone).")
    flush_interval: Duration = Field(1.0, description="How often metered usage is added to the state store.")
    retention: Duration = Field(400 * 86400.0, description="How long a month's usage is kept after it ends.")
