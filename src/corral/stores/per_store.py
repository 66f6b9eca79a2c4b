"""Something this process keeps per store object (a kill-switch cache, the breaker's
successes not yet written), found by the store's identity and forgotten with the store.

A plain dict keyed by ``id(store)`` keeps the lookup on the allow path cheap; a weak
reference tells a reused id from the store (a store that cannot be weakly referenced is
kept alive instead, so its id is never reused). Imports nothing of corral.

>>> from corral.stores.memory import MemoryStore
>>> kept = PerStore[list[int]]()
>>> store = MemoryStore()
>>> kept.get(store, list).append(1)
>>> kept.get(store, list)
[1]
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerStore(Generic[T]):
    """A value per store object, made on first use."""

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        # id(store) -> (a callable giving the store back while it lives, its value)
        self._entries: dict[int, tuple[Callable[[], object], T]] = {}
        self._lock = threading.Lock()

    def get(self, store: object, make: Callable[[], T]) -> T:
        """The value kept for ``store``; ``make()`` the first time."""
        entry = self._entries.get(id(store))
        if entry is not None and entry[0]() is store:
            return entry[1]
        with self._lock:
            entry = self._entries.get(id(store))
            if entry is not None and entry[0]() is store:
                return entry[1]
            return self._keep(store, make())

    def set(self, store: object, value: T) -> T:
        """Keep ``value`` for ``store`` from now on."""
        with self._lock:
            return self._keep(store, value)

    def _keep(self, store: object, value: T) -> T:
        key = id(store)
        entries = self._entries

        def forget(ref: object) -> None:
            # Called while the store is being freed, possibly from the garbage collector
            # with the lock held: no lock here. Its id cannot be reused before this returns.
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                entries.pop(key, None)

        back: Callable[[], object]
        try:
            back = weakref.ref(store, forget)
        except TypeError:  # cannot be weakly referenced: kept alive, so its id stays its own
            back = _Strong(store)
        entries[key] = (back, value)
        return value


class _Strong:
    __slots__ = ("_obj",)

    def __init__(self, obj: object) -> None:
        self._obj = obj

    def __call__(self) -> object:
        return self._obj
