"""The installed fairgate's version, for /metrics, the OpenAPI document and the CLI."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from gateway import __version__


def package_version() -> str:
    try:
        return version("fairgate")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return __version__
