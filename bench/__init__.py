"""Benchmarks: each module measures bae against a reference in the same run."""
