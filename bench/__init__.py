"""Benchmarks of the Executor Service (`python -m bench`); not tests: they print, never assert."""
