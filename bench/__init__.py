"""Benchmarks: each prints a JSON report and a one-line summary. Run from the repository root."""
