"""Benchmarks run by `make bench`: every figure is printed next to a baseline measured in the same run."""
