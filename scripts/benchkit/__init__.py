"""Bundled load scripts: ``scripts/bench`` (see cli.py and docs/benchmarks.md)."""
