"""Benchmark subcommands for scripts/bench.py; each measures the real code path next to a raw
baseline in the same run and returns Figures."""
