"""The docs name every config key there is, so they cannot drift from the code."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from gateway.config import GatewayConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths += key_paths(annotation, f"{path}.")
        elif origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
            paths += key_paths(args[1], f"{path}.<name>.")
        elif origin is tuple and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            paths += key_paths(args[0], f"{path}[i].")
        else:
            paths.append(path)
    return paths


def test_every_config_key_is_documented():
    paths = key_paths(GatewayConfig)
    assert "routes[i].max_body" in paths  # the walk reaches nested sections
    missing = [path for path in paths if f"`{path}`" not in DOC]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def yaml_blocks(text: str) -> list[str]:
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


def test_the_documented_examples_are_valid_configs(tmp_path):
    from gateway.config import load_config

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    examples = yaml_blocks(DOC) + yaml_blocks(readme)
    assert len(examples) >= 2
    env = {"PRODUCT_API_URL": "http://10.1.2.3:9000", "PARTNER_HMAC_SECRET": "p" * 32, "ALERT_SECRET": "a" * 32,
           "FAIRGATE_DEMO_SECRET": "d" * 32, "FAIRGATE_HASH_SALT": "test-salt-of-16-bytes"}
    import yaml

    base = {"upstreams": {"app": {"url": "http://127.0.0.1:9000"}},
            "routes": [{"name": "all", "path_prefix": "/", "upstream": "app", "auth": "none"}]}
    for number, example in enumerate(examples):
        document = yaml.safe_load(example)
        if "routes" not in document:  # a snippet: check it inside a minimal config
            document = {**base, **document}
        path = tmp_path / f"example-{number}.yaml"
        path.write_text(yaml.safe_dump(document))
        load_config(path, environ=env)
