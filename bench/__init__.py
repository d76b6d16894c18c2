"""Benchmarks: this system against kopf and the API floor, on one local cluster (bench.run)."""
