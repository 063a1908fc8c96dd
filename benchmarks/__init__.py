"""Benchmarks that print figures (speed, memory, data quality). Installed as ``esccs.benchmarks``."""

__all__: list[str] = []
