"""Benchmarks, each runnable as ``python -m lungjax.bench.<name>``."""
