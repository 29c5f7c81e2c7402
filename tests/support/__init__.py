"""Helpers the tests and the benchmarks share, each written once (artifacts, workloads, workers, topics, checks)."""
