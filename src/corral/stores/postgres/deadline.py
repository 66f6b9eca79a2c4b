"""A client-side deadline for PostgreSQL calls.

``statement_timeout`` is the server's: a server that accepts a connection and then
never answers (a network partition, a process stopped mid-call) leaves a client
waiting forever. :class:`BoundedConnection` ends every wait of a store call at
:data:`UNTIL`: past it, the statement is cancelled on the server (so it is rolled
back) and the server gets :data:`CANCEL_WAIT` seconds to take the cancellation
and as long again to answer; a server that does neither gets its connection closed
and the call raises :class:`NoAnswer`. A connection a cancel was sent on is closed after the call
(:func:`settle`), so that a late cancel cannot hit the next statement sent on it.

The bound needs psycopg's ``Connection.wait(..., timeout=...)`` (psycopg 3.3);
with an older psycopg the connection waits as psycopg does, bounded by the
server's ``statement_timeout`` only.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg import errors

#: When the store call running in this context must have its answer (time.monotonic()).
UNTIL: ContextVar[float | None] = ContextVar("corral_pg_until", default=None)
#: How long a server is given to confirm a cancellation (seconds).
CANCEL_WAIT = 0.02


class _Never(Exception):
    """Stands in for psycopg's wait timeout where psycopg has none (never raised)."""


_WaitTimeout: type[BaseException] = getattr(errors, "_WaitTimeout", _Never)
SUPPORTED = (
    _WaitTimeout is not _Never
    and "timeout" in inspect.signature(psycopg.Connection.wait).parameters
    and hasattr(psycopg.Connection, "cancel_safe")
)


class NoAnswer(psycopg.OperationalError):
    """The server gave no answer by the call's deadline, nor to its cancellation."""


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose waits end at :data:`UNTIL` (see the module docstring)."""

    cancel_sent = False

    if SUPPORTED:  # else psycopg's own wait, whatever its signature

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            until = UNTIL.get()
            if until is None:
                return super().wait(gen, interval, timeout)
            left = max(0.0, until - time.monotonic())
            with contextlib.suppress(_WaitTimeout):  # not answered in time: cancelled below
                return super().wait(gen, interval, left if timeout is None else min(timeout, left))
            # The statement runs on: cancel it, so that the server rolls it back, and take
            # the answer it then gives (its result if it ended first, else QueryCanceled).
            self.cancel_sent = True
            try:
                self.cancel_safe(timeout=CANCEL_WAIT)
                cancelled = True
            except Exception:  # the server does not take the cancellation either
                cancelled = False
            if cancelled:
                with contextlib.suppress(_WaitTimeout):  # nor its answer to it: not answering
                    return super().wait(gen, interval, CANCEL_WAIT)
            self.pgconn.finish()  # nothing more can be said on it
            raise NoAnswer(f"the server gave no answer within {left:.3g} s")


def settle(conn: Any) -> None:
    """After a call: close ``conn`` if a cancel was sent on it (the pool replaces it)."""
    if getattr(conn, "cancel_sent", False) and not conn.closed:
        conn.close()
