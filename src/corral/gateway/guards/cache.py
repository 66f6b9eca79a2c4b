"""Read cache: an identical read within a run is served from the run's cache.

Per-tool TTL (default 60 s); any write clears the cache; errors are never cached;
``cache: false`` opts a tool out. Served calls cost nothing. A structured value is
kept and served as a copy, so a caller that changes what it got cannot change what
the next call is served.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.state import RunState

_MISS = object()


def lookup(call: Call) -> Any:
    """The call's cached observation, or a miss (:func:`is_miss`)."""
    core, eff, digest = call.run, call.eff, call.digest
    if eff.effect != "read" or not eff.cache:
        return _MISS
    hit = core.cache.get((eff.tool.name, digest))
    if hit is None:
        return _MISS
    at, value = hit
    if core.time.now() - at > eff.cache_ttl:
        core.cache.pop((eff.tool.name, digest), None)
        return _MISS
    return copy_of(value)


def copy_of(value: Any) -> Any:
    """``value``, or a deep copy of it when it could be changed in place."""
    return value if value is None or isinstance(value, str | int | float) else copy.deepcopy(value)


def store(call: Call, value: Any) -> None:
    """Keep the call's observation (a write clears the cache instead)."""
    core, eff, digest = call.run, call.eff, call.digest
    if eff.effect == "write":
        core.cache.clear()
    elif eff.cache and eff.cache_ttl > 0:
        core.cache[(eff.tool.name, digest)] = (core.time.now(), copy_of(value))


def clear(core: RunState) -> None:
    """Forget every cached read (a write is about to run)."""
    core.cache.clear()


def is_miss(value: Any) -> bool:
    return value is _MISS
