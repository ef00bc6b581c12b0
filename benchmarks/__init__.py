"""Side-by-side benchmarks of resilience against its peer libraries.

Run ``python -m benchmarks`` (``--help`` for options). Each ``bench_*.py`` module
exposes ``groups(ctx) -> list[Group]``; see ``_harness.py``.
"""
