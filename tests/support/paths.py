"""Where the repository is: the shipped config, docs and deploy files the tests read."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
