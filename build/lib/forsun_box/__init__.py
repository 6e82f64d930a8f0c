"""forsun-box: a durable timer service, drop-in compatible with forsun."""

__version__ = "0.1.0"
