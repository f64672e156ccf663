"""Turn a PyTorch model into a self-contained Python package of readable, precompiled source."""

__version__ = "0.1.0"
