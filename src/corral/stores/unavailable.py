"""A stand-in for a store that could not be opened: every call raises why.

``corral.run`` and ``Run(...)`` fail closed *inside* the run: when the store a run
names cannot be opened (a file that is not a database, a directory, a missing
directory, a server that refuses the connection), the run still starts, on this
stand-in, and its first governed action stops it with ``control_plane_unavailable``
and the reason. The caller gets a :class:`~corral.RunResult`, not an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from corral.exceptions import StoreError


class UnavailableStore:
    """Every store method raises :class:`~corral.exceptions.StoreError` with ``reason``
    (``close`` does nothing). Not a store anyone can write to: nothing is recorded."""

    closed = False
    #: Treated as the database it stands in for (its waits are timed, its queue assumed).
    shared = True

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def close(self) -> None:
        """Nothing was opened: nothing to close."""

    def __getattr__(self, name: str) -> Callable[..., NoReturn]:
        if name.startswith("_"):
            raise AttributeError(name)

        def unavailable(*args: Any, **kwargs: Any) -> NoReturn:
            raise StoreError(self.reason)

        return unavailable

    def __repr__(self) -> str:
        return f"UnavailableStore({self.reason!r})"
