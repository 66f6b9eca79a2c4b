"""Stores: shared state behind one Protocol, chosen by URL."""

from __future__ import annotations

import os

from ..exceptions import ConfigError
from .base import Store
from .memory import MemoryStore

DEFAULT_URL = "memory://"

_shared: dict[str, Store] = {}


def default_url() -> str:
    """``CORRAL_DB`` if set, else the built-in default (in memory until a durable store lands)."""
    return os.environ.get("CORRAL_DB") or DEFAULT_URL


def open_store(url: str | Store | None = None) -> Store:
    """Open a store from a URL (``memory://``), or pass a store object through.

    ``memory://`` gives one store per process shared by every run that names it,
    so a kill switch set through it reaches them all; ``memory://NAME`` gives a
    separate named one.
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        return url
    if url.startswith("memory://"):
        name = url[len("memory://") :]
        store = _shared.get(name)
        if store is None:
            store = _shared[name] = MemoryStore()
        return store
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ConfigError(f"unsupported store URL {url!r}: scheme {scheme!r} is not available (use memory://)")


__all__ = ["DEFAULT_URL", "MemoryStore", "Store", "default_url", "open_store"]
