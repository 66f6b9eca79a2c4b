"""Event sinks: where a run's trace events go besides the store (metrics, exporters).

A sink is a callable taking a batch of :class:`~corral.stores.base.Event` after the
store has accepted it. Sinks must be fast and must not raise: an exception from a
sink is logged and dropped, because observability must never change a run's
outcome (the store, not a sink, is what governance relies on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from corral.stores.base import Event

Sink = Callable[[Sequence[Event]], None]

log = logging.getLogger("corral")
_SINKS: list[Sink] = []


def add_sink(sink: Sink) -> None:
    """Send every run's events to ``sink`` too (once per sink)."""
    if sink not in _SINKS:
        _SINKS.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _SINKS:
        _SINKS.remove(sink)


def emit(events: Sequence[Event]) -> None:
    """Hand ``events`` to every sink; a failing sink is logged, never raised."""
    for sink in tuple(_SINKS):
        try:
            sink(events)
        except Exception:  # a broken exporter must not break a governed run
            log.exception("corral event sink %r failed", sink)
