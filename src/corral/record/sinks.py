"""Event sinks: where a run's trace events go besides the store (metrics, exporters).

A sink is a callable taking a batch of :class:`~corral.stores.base.Event` after the
store has accepted it. Sinks must be fast and must not raise: an exception from a
sink is logged and dropped, because observability must never change a run's
outcome (the store, not a sink, is what governance relies on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from corral.stores.base import Event

Sink = Callable[[Sequence[Event]], None]

log = logging.getLogger("corral")


class Sinks:
    """A set of sinks a run's events are handed to (in the order they were added)."""

    __slots__ = ("installed",)

    def __init__(self) -> None:
        # The sinks, in order; replaced as a whole, so a run reads it without a lock (and
        # the allow path checks it is empty without a call).
        self.installed: tuple[Sink, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.installed)

    def __iter__(self) -> Iterator[Sink]:
        return iter(self.installed)

    def add(self, sink: Sink) -> None:
        """Send events to ``sink`` too (once per sink)."""
        if sink not in self.installed:
            self.installed = (*self.installed, sink)

    def remove(self, sink: Sink) -> None:
        self.installed = tuple(s for s in self.installed if s is not sink and s != sink)

    def emit(self, events: Sequence[Event]) -> None:
        """Hand ``events`` to every sink; a failing sink is logged, never raised."""
        for sink in self.installed:
            try:
                sink(events)
            except Exception:  # a broken exporter must not break a governed run
                log.exception("corral event sink %r failed", sink)


#: This process's sinks (the default :class:`~corral.gateway.services.Services`): the
#: metrics and the trace exporters install theirs here.
SINKS = Sinks()


def add_sink(sink: Sink) -> None:
    """Send every run's events to ``sink`` too (once per sink)."""
    SINKS.add(sink)


def remove_sink(sink: Sink) -> None:
    SINKS.remove(sink)


def emit(events: Sequence[Event]) -> None:
    """Hand ``events`` to every sink of the process; a failing sink is logged, never raised."""
    SINKS.emit(events)
