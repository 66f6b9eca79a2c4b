"""Read cache: an identical read within a run is served from the run's cache.

Per-tool TTL (default 60 s); any write clears the cache; errors are never cached;
``cache: false`` opts a tool out. Served calls cost nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore

_MISS = object()


def lookup(core: RunCore, eff: Effective, digest: str) -> Any:
    if eff.effect != "read" or not eff.cache:
        return _MISS
    hit = core.cache.get((eff.tool.name, digest))
    if hit is None:
        return _MISS
    at, value = hit
    if core.now() - at > eff.cache_ttl:
        core.cache.pop((eff.tool.name, digest), None)
        return _MISS
    return value


def store(core: RunCore, eff: Effective, digest: str, value: Any) -> None:
    if eff.effect == "write":
        core.cache.clear()
    elif eff.cache and eff.cache_ttl > 0:
        core.cache[(eff.tool.name, digest)] = (core.now(), value)


def clear(core: RunCore) -> None:
    """Forget every cached read (a write is about to run)."""
    core.cache.clear()


def is_miss(value: Any) -> bool:
    return value is _MISS
