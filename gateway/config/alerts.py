"""The `alerts` section: webhooks told about standings changing and findings, deduplicated per
customer and kind with a cooldown, retried with backoff, never on the request path."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway.config.types import Duration, Section

AlertEvent = Literal["state_change", "finding", "admin_action"]


class Webhook(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Used in logs and metrics.")
    url: str = Field(description="http(s) URL that receives a JSON POST per alert.")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key (use ${ENV}): signs each alert in "
                                                       "Fairgate-Signature.")
    events: tuple[AlertEvent, ...] = Field(("state_change", "finding"), description="Which audit events alert.")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        return url


class AlertSettings(Section):
    webhooks: tuple[Webhook, ...] = ()
    cooldown: Duration = Field(900.0, description="At most one alert per customer and kind within this; the next "
                                                  "one says how many were held back.")
    timeout: Duration = Field(5.0, description="Longest wait for a receiver's answer.")
    retries: int = Field(5, ge=0, le=20, description="Further attempts after a failed delivery.")
    backoff: Duration = Field(1.0, description="Wait before the first retry; doubles each time.")
    queue_size: int = Field(10_000, ge=10, description="Alerts waiting per webhook at most; beyond it the oldest "
                                                       "wait is dropped, logged and counted.")
