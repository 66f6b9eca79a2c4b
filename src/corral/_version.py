"""The version of corral (a module of its own, so that any part can name it without
importing the whole package)."""

__version__ = "0.1.0"
