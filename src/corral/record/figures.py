"""The per-run drift figures: their names and what each is, for one run.

========================  ==================================================================
``tool_calls_per_run``    the tool calls the run's budget counted
``tokens_per_request``    input plus output tokens of its model calls that answered, over
                          their number (none when it made none)
``stop_reason``           why it ended (``interrupted`` for a run whose process died)
``latency_p95``           the 95th percentile (nearest rank) of its tool-call attempts'
                          seconds (none when it made none)
``spend_per_run``         USD it spent on models and tools
========================  ==================================================================

The same definitions serve the metrics a run exports (:mod:`corral.record.metrics`) and
the windows ``corral drift`` compares (:mod:`corral.drift`).

>>> percentile([0.1, 0.2, 0.3, 0.4], 0.95)
0.4
>>> percentile([], 0.95) is None
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import get_args

from corral.policy.fields import Tracked
from corral.stores.figures import RunFigures

#: Every figure ``monitoring.track`` may name, in the order reports list them.
FIGURES: tuple[Tracked, ...] = get_args(Tracked)
#: The figures that are numbers (``stop_reason`` is a category).
NUMBERS: tuple[Tracked, ...] = tuple(name for name in FIGURES if name != "stop_reason")

#: The percentile of ``latency_p95``.
P95 = 0.95


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` by nearest rank (a value that occurred); ``None``
    when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def stop_reason(run: RunFigures) -> str:
    """The run's stop reason; ``interrupted`` (its status) when its process died first."""
    return run.stop_reason or run.status or "unknown"


def value(name: str, run: RunFigures) -> float | None:
    """Number figure ``name`` of ``run``; ``None`` when the run has no such figure (no model
    call answered, no tool call made)."""
    if name == "tool_calls_per_run":
        return float(run.tool_calls)
    if name == "tokens_per_request":
        return run.tokens / run.requests if run.requests else None
    if name == "latency_p95":
        return percentile(run.tool_seconds, P95)
    if name == "spend_per_run":
        return float(run.usd)
    raise ValueError(f"{name!r} is not a number figure (one of {', '.join(NUMBERS)})")
