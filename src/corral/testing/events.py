"""capture_events(): collect the events runs write while a block is open, to assert on them.

Events reach the capture the way they reach an exporter: through an event sink
(:mod:`corral.record.sinks`), after the store accepted them. Imports the sinks and the
store's :class:`~corral.stores.base.Event`, nothing else of corral.

>>> import corral
>>> from corral.testing import ScriptedModel, capture_events, final
>>> with capture_events() as events:
...     result = corral.run("hi", model=ScriptedModel([final("hello")]),
...                         policy=corral.Policy.from_dict({}), store="memory://")
>>> events.kinds()[-1], events.of("run_end")[0].data["stop_reason"]
('run_end', 'ok')
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import overload

from corral.record import sinks
from corral.stores.base import Event


class CapturedEvents(Sequence[Event]):
    """The events captured so far, in the order they were written (a read-only list).

    ``events.of("tool_result")`` picks by kind, ``events.kinds()`` lists the kinds in order,
    ``events.for_run(run_id)`` keeps one run's.
    """

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self._events = list(events)
        self._lock = threading.Lock()

    def _add(self, batch: Sequence[Event]) -> None:
        with self._lock:  # runs in other threads write too
            self._events.extend(batch)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        with self._lock:
            return self._events[index]

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            return iter(list(self._events))

    def __repr__(self) -> str:
        return f"CapturedEvents({self.kinds()!r})"

    def of(self, *kinds: str) -> list[Event]:
        """The events of these kinds, in order."""
        return [e for e in self if e.kind in kinds]

    def kinds(self) -> list[str]:
        """The kind of every event, in order."""
        return [e.kind for e in self]

    def for_run(self, run_id: str) -> CapturedEvents:
        """Only the events of run ``run_id``."""
        return CapturedEvents([e for e in self if e.run_id == run_id])

    def run_ids(self) -> list[str]:
        """The runs that wrote events, in the order each first did."""
        return list(dict.fromkeys(e.run_id for e in self))


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Collect every event the runs of this process write while the block is open.

    Runs created inside the block or before it are captured alike, as their events are
    written (the rest of a run's events when it ends). The capture is removed when the
    block exits, whatever happens in it, so nothing carries over to the next test.
    """
    captured = CapturedEvents()

    def sink(batch: Sequence[Event]) -> None:
        captured._add(batch)

    sinks.add_sink(sink)
    try:
        yield captured
    finally:
        sinks.remove_sink(sink)
