"""The baselines the benchmarks compare codepool against."""
