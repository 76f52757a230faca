"""Benchmarks: `make bench` and `make bench-quick` run bench/run.py (docs/performance.md)."""
