"""Benchmarks: each measures a codepool path and its baselines in the same run."""
