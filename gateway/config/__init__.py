"""Config: one YAML file parsed once into typed, immutable objects."""

from gateway.config.errors import ConfigError, ConfigIssue
from gateway.config.loader import load_config
from gateway.config.model import GatewayConfig, Route, Upstream

__all__ = ["ConfigError", "ConfigIssue", "GatewayConfig", "Route", "Upstream", "load_config"]
