"""Benchmarks: the core computations against obvious references, and the whole system."""
