"""Benchmarks (``python -m bench`` / ``make bench``). Numbers, not timed tests: see ``bench/README.md``."""
