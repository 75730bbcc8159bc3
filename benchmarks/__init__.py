"""Benchmark scripts (run as `python benchmarks/<name>.py`); `common` holds the shared helpers."""
