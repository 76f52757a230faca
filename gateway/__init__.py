"""fairgate: a fair-use gateway."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fairgate")  # one source of truth: pyproject.toml, via the installed metadata
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
