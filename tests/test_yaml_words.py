"""Words YAML reads as booleans: an unquoted `off` (the documented word of several settings) is
taken as `off`, for every enumerated key that has it, found by walking the config models; a
boolean where no such word fits is explained, with the quoted form to write."""

from __future__ import annotations

import collections.abc
import types
import typing

import pytest
import yaml
from pydantic import BaseModel

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.config.types import literal_values

BASE = {"upstreams": {"app": {"url": "http://127.0.0.1:9000"}},
        "routes": [{"name": "all", "path_prefix": "/", "upstream": "app", "auth": "none"}]}


def _inner(annotation: typing.Any) -> list[typing.Any]:
    """The types a field holds: through Annotated, X | None, unions, tuples and mappings."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _inner(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [inner for arg in typing.get_args(annotation) for inner in _inner(arg)]
    if origin is tuple:
        return _inner(typing.get_args(annotation)[0])
    if origin in (dict, collections.abc.Mapping):
        return _inner(typing.get_args(annotation)[1])
    return [annotation]


def enumerated_keys(model: type[BaseModel], prefix: str = "") -> dict[str, tuple]:
    """Every Literal setting of the config, by key path ([i] for list items, <name> for map values)."""
    found: dict[str, tuple] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        values = literal_values(field.annotation)
        if values:
            found[path] = values
        origin = typing.get_origin(field.annotation)
        marker = "[i]" if origin is tuple else ".<name>" if origin in (dict, collections.abc.Mapping) else ""
        for inner in _inner(field.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found.update(enumerated_keys(inner, f"{path}{marker}."))
    return found


OFF_KEYS = sorted(path for path, values in enumerated_keys(GatewayConfig).items() if "off" in values)


def test_the_walk_finds_the_documented_off_words():
    assert {"auth.corporate_email.action", "enforcement.mode", "detection.sharing.mode", "detection.scraping.mode",
            "detection.seats.mode"} <= set(OFF_KEYS)


def unquoted(path: str, word: str) -> str:
    """A minimal config file with `word` written unquoted at `path`."""
    if "[i]" in path or "<name>" in path:
        pytest.fail(f"{path}: add a case for an enumerated key inside a list or map")
    document: dict = {**BASE}
    node = document
    *parents, key = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[key] = "__WORD__"
    return yaml.safe_dump(document).replace("__WORD__", word)


@pytest.mark.parametrize("path", OFF_KEYS)
def test_unquoted_off_is_the_word_off(path, tmp_path):
    file = tmp_path / "gateway.yaml"
    file.write_text(unquoted(path, "off"))
    assert yaml.safe_load(file.read_text())  # YAML itself says False here
    value = load_config(file)
    for part in path.split("."):
        value = getattr(value, part)
    assert value == "off"


@pytest.mark.parametrize(("path", "word", "quoted"), [
    ("enforcement.mode", "on", '"enforce"'),  # on is no value of enforcement.mode
    ("logging.format", "yes", '"json"'),
])
def test_a_boolean_where_no_word_fits_is_explained(path, word, quoted, tmp_path):
    file = tmp_path / "gateway.yaml"
    file.write_text(unquoted(path, word))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    (issue,) = caught.value.issues
    assert issue.path == path
    assert "YAML reads an unquoted" in issue.reason and quoted in issue.reason


def test_a_route_auth_written_no_is_explained(tmp_path):
    file = tmp_path / "gateway.yaml"
    file.write_text(yaml.safe_dump(BASE).replace("auth: none", "auth: no"))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert any(issue.path == "routes[0].auth" and "'none'" in issue.reason and "YAML reads an unquoted" in issue.reason
               for issue in caught.value.issues)
