"""Synthetic textbook-quality data pipeline: generate, classify, filter, train, publish."""

__version__ = "0.1.0"
