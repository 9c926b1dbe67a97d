"""The version of datamill, in a module of its own so that any layer can read it without importing the
package's public face (``datamill/__init__.py`` sits above every layer)."""

__version__ = "0.1.0"
