"""Proxied calls in flight under the kill switch.

A ``stop_all`` switch set while an upstream works on a call covers it: the call is cancelled
(the SDK tells the server) within :data:`WATCH_EVERY` seconds, and the proxy reports it as
cancelled in flight (the run stops with ``kill_switch``). One task per proxy looks at every
call in flight (through the process's switch cache, :meth:`corral.loop.tickets.Ticket.killed`)
rather than a task per call: a call pays for a cancel scope and a set entry, not for starting
and cancelling a task.

Imports the loop's tickets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from corral.loop.tickets import Ticket

__all__ = ["WATCH_EVERY", "Watch"]

#: How often a call in flight looks at the kill switch (seconds; through the switch cache).
WATCH_EVERY = 0.1

T = TypeVar("T")


class _Flight:
    __slots__ = ("error", "killed", "scope", "ticket")

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.scope = anyio.CancelScope()
        self.killed: BaseException | None = None  # the failure to report: a stop_all switch
        self.error: Exception | None = None  # looking at the switches failed


class Watch:
    """The calls in flight, looked at every ``every`` seconds while :meth:`run` runs."""

    def __init__(self, every: float = WATCH_EVERY) -> None:
        self.every = every
        self._flights: set[_Flight] = set()

    async def run(self) -> None:
        """Look at every call in flight, every ``every`` seconds, until cancelled."""
        while True:
            await anyio.sleep(self.every)
            for flight in list(self._flights):
                if flight.killed is not None or flight.error is not None:
                    continue
                try:
                    flight.killed = flight.ticket.killed()
                except Exception as exc:  # raised in the call's own task, as it would be there
                    flight.error = exc
                if flight.killed is not None or flight.error is not None:
                    flight.scope.cancel()

    async def call(
        self, ticket: Ticket, call: Callable[[], Awaitable[T]]
    ) -> tuple[T | None, BaseException | None]:
        """``call()``'s result, or, when a ``stop_all`` kill switch covers the call while it
        runs, ``(None, failure)`` with the call cancelled."""
        flight = _Flight(ticket)
        result: Any = None
        with flight.scope:
            self._flights.add(flight)
            try:
                result = await call()
            finally:
                self._flights.discard(flight)
        if flight.error is not None:
            raise flight.error
        if flight.killed is not None:
            return None, flight.killed
        return result, None
