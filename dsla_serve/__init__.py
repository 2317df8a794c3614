"""DSLA-Serve: serve partly converted dual-state linear attention models under latency SLOs."""

__version__ = "0.1.0"
