"""Command-line entry points: ``forsun-box``, ``forsund`` and ``forsun``."""
