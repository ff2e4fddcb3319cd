"""Executor Service: run untrusted code in single-use, locked-down Docker containers."""

__version__ = "0.1.0"
