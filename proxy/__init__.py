"""shadow-proxy: put a model into production safely, at the network layer."""

__version__ = "0.1.0"
