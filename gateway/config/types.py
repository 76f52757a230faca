"""Value types every config section uses: human units, addresses, and the frozen base class."""

from __future__ import annotations

import ipaddress
from types import MappingProxyType
from typing import Annotated, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from gateway.config.units import DURATION_HINT, SIZE_HINT, parse_duration, parse_size

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|min|m|h|d|w)$", "description": DURATION_HINT}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([kKmMgGtT]i?[bB]|[bB])$"},
                {"type": "integer", "minimum": 0},
            ],
            "description": SIZE_HINT,
        }
    ),
]


def parse_host_port(value: object) -> tuple[str, int]:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and port.isdigit() and 0 <= int(port) <= 65535 and host:
            return host.strip("[]"), int(port)
    raise ValueError(f"expected HOST:PORT such as '127.0.0.1:8080' or '[::1]:8080', got {value!r}")


HostPort = Annotated[
    tuple[str, int],
    BeforeValidator(parse_host_port),
    WithJsonSchema({"type": "string", "pattern": r"^.+:\d{1,5}$", "description": "HOST:PORT"}),
]


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR such as '10.0.0.0/8', got {value!r}") from None


Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(_parse_network),
    WithJsonSchema({"type": "string", "description": "an IP address or CIDR"}),
]


def frozen_mapping(value: dict) -> Mapping:
    return MappingProxyType(value)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)
