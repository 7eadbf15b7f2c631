"""Benchmarks: each prints one JSON line (python -m benchmarks.<name>)."""
