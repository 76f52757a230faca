"""fairgate: a fair-use gateway."""

__version__ = "0.1.0"
