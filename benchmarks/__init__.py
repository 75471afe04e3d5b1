"""Benchmarks: each module measures a ratio against a baseline in the same run.

Run one with `.venv/bin/python -m benchmarks.<name>`; figures go to docs/BENCHMARKS.md.
"""
