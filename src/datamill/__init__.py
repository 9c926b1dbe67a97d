"""datamill: a data management system with dataflows built in."""

from datamill.client import Client, connect

__version__ = "0.1.0"

__all__ = ["Client", "__version__", "connect"]
