"""A fault-injecting store: a real store whose chosen calls raise, to test that runs fail
closed whatever the store does.

>>> import corral
>>> from corral.testing import FaultyStore, MemoryStore, ScriptedModel, final
>>> store = FaultyStore(MemoryStore()).fail("create_run", error=KeyError("lost"))
>>> policy = corral.Policy.from_dict({})
>>> result = corral.run("hi", model=ScriptedModel([final("done")]), policy=policy, store=store)
>>> result.stop_reason, store.failures
('control_plane_unavailable', [('create_run', 1)])

A plan names a method, the call of it that fails first (``nth``, counted from 1 per
method), how many calls fail from there (``times``; ``None`` for ever: the store never
recovers) and what they raise (an exception object or class; a class is instantiated
with a message naming the call). Calls of other methods go through unchanged, as do
attributes that are not methods (``closed``, ``path``, ...).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from corral.exceptions import StoreError
from corral.stores.base import Store


@dataclass(frozen=True, slots=True)
class _Plan:
    nth: int
    times: int | None
    error: BaseException | type[BaseException]

    def due(self, count: int) -> bool:
        if count < self.nth:
            return False
        return self.times is None or count < self.nth + self.times


class FaultyStore:
    """Wraps ``inner`` (any :class:`~corral.stores.base.Store`); see the module docstring.

    ``failures`` lists ``(method, call number)`` for every call that was made to fail;
    ``calls`` counts the calls of each method (failed ones included). Thread-safe.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}
        self.failures: list[tuple[str, int]] = []
        self._plans: dict[str, _Plan] = {}
        self._lock = threading.Lock()

    def fail(
        self,
        method: str,
        *,
        nth: int = 1,
        times: int | None = 1,
        error: BaseException | type[BaseException] = StoreError,
    ) -> FaultyStore:
        """Make calls ``nth`` .. ``nth + times - 1`` of ``method`` raise ``error``; returns self."""
        if not callable(getattr(self.inner, method, None)):
            raise AttributeError(f"{type(self.inner).__name__} has no method {method!r}")
        if nth < 1 or (times is not None and times < 1):
            raise ValueError(f"nth and times must be at least 1, got nth={nth}, times={times}")
        with self._lock:
            self._plans[method] = _Plan(nth, times, error)
        return self

    @property
    def shared(self) -> bool:
        """The wrapped store's: whether other processes share it."""
        return self.inner.shared

    def heal(self) -> None:
        """Forget every plan: from now on every call goes through."""
        with self._lock:
            self._plans.clear()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if name.startswith("_") or not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                count = self.calls[name] = self.calls.get(name, 0) + 1
                plan = self._plans.get(name)
                failing = plan is not None and plan.due(count)
                if failing:
                    self.failures.append((name, count))
            if failing:
                assert plan is not None
                error = plan.error
                if isinstance(error, type):
                    raise error(f"injected failure of {name} (call {count})")
                raise error
            return target(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"


__all__ = ["FaultyStore"]
