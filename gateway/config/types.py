"""Value types every config section uses: human units, addresses, and the frozen base class."""

from __future__ import annotations

import ipaddress
import types
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

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

K = TypeVar("K")
V = TypeVar("V")


# A licensed unit a quota can be counted per (ports, seats, agents, ...): the vendor names it.
UnitName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


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


def frozen_mapping(value: dict[K, V]) -> Mapping[K, V]:
    return MappingProxyType(value)


# YAML 1.1 (PyYAML) reads these words unquoted as booleans; where one is a documented value of
# a setting, the boolean is taken back to the word the user wrote.
_YAML_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def literal_values(annotation: Any) -> tuple[Any, ...]:
    """The values of a Literal setting (also inside `X | None`); () for any other type."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(value for arg in typing.get_args(annotation) for value in literal_values(arg))
    return ()


def yaml_word(key: str, value: bool, allowed: tuple[Any, ...]) -> str:
    """The documented word an unquoted off/on (no/yes) stood for, before YAML made it a boolean."""
    for word in _YAML_WORDS[value]:
        if word in allowed:
            return word
    choices = ", ".join(repr(choice) for choice in allowed)
    raise ValueError(f"{key}: YAML reads an unquoted {'/'.join(_YAML_WORDS[value])} as the boolean {value}; "
                     f"expected one of {choices} (quote a word YAML might take for a boolean, e.g. "
                     f"{key}: \"{allowed[0]}\")")


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=False)

    # Enumerated (Literal) settings by key: a boolean given for one is a YAML word to take back.
    _yaml_words: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._yaml_words = {}
        for name, field in cls.model_fields.items():
            values = literal_values(field.annotation)
            if values and all(isinstance(value, str) for value in values):
                cls._yaml_words[field.alias or name] = values

    @model_validator(mode="before")
    @classmethod
    def _booleans_as_words(cls, data: Any) -> Any:
        if cls._yaml_words and isinstance(data, dict):
            changed = {key: yaml_word(key, data[key], values) for key, values in cls._yaml_words.items()
                       if isinstance(data.get(key), bool)}
            if changed:
                return {**data, **changed}
        return data
