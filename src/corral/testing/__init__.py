"""Fakes for testing agents offline: a scripted model, a model driven by a function, a
capture of the events runs write, the in-memory store, a manual clock, and the fault kit
(fault-injecting tools, models and stores, see :mod:`corral.testing.faults`).

No production module imports this package (an import-linter contract keeps it so).

>>> from corral.testing import ScriptedModel, call, final
>>> model = ScriptedModel([call("search.read", query="x"), final("done")])
>>> len(model.script)
2
"""

from corral._public import present_as as _present_as
from corral.clock import ManualClock
from corral.stores.memory import MemoryStore
from corral.testing.events import CapturedEvents, capture_events
from corral.testing.faults import (
    HOSTILE_PAYLOADS,
    Execution,
    FaultyModel,
    FaultyStore,
    FaultyTool,
    GullibleModel,
    flaky_tool,
    garbage_tool,
    hanging_tool,
    hostile_tool,
    huge_tool,
    raising_tool,
    slow_tool,
)
from corral.testing.function import FunctionModel
from corral.testing.scripted import (
    ScriptedModel,
    Turn,
    call,
    error,
    final,
    malformed,
    prices,
    raw_call,
    slow,
    truncated,
    turn,
)

__all__ = [
    "HOSTILE_PAYLOADS",
    "CapturedEvents",
    "Execution",
    "FaultyModel",
    "FaultyStore",
    "FaultyTool",
    "FunctionModel",
    "GullibleModel",
    "ManualClock",
    "MemoryStore",
    "ScriptedModel",
    "Turn",
    "call",
    "capture_events",
    "error",
    "final",
    "flaky_tool",
    "garbage_tool",
    "hanging_tool",
    "hostile_tool",
    "huge_tool",
    "malformed",
    "prices",
    "raising_tool",
    "raw_call",
    "slow",
    "slow_tool",
    "truncated",
    "turn",
]

# Reprs and pickles say ``corral.testing.ScriptedModel``, the path users import from
# (the in-memory store and the manual clock keep their own homes).
_present_as("corral.testing", globals(), __all__)
