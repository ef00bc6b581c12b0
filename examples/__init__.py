"""Runnable example systems built on resilience (run from the project root)."""
