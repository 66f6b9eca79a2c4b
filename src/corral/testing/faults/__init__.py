"""Fault injection: tools and models that misbehave on purpose, deterministically by seed.

Test that your agent, and corral around it, hold up when dependencies do not:
tools that fail at a rate, stall, hang, raise, return garbage or a flood of
text, or return text written by an attacker; models that are rate limited, time
out, write malformed tool calls, or obey whatever an observation tells them.

Every fault that draws a random number owns a ``random.Random(seed)``: the same
seed gives the same faults in the same order, so a failing run can be replayed.

>>> import corral
>>> from corral.testing import MemoryStore, ScriptedModel, call, final, flaky_tool
>>> vendor = flaky_tool("vendor.read", rate=1.0, seed=7)
>>> policy = corral.Policy.from_dict({"tools": {"allow": ["vendor.read"]}})
>>> model = ScriptedModel([call("vendor.read", query="status"), final("done")])
>>> result = corral.run("status?", model=model, tools=[vendor.tool], policy=policy,
...                     store=MemoryStore())
>>> result.stop_reason, vendor.count()
('tool_error', 1)

:class:`FaultyStore` wraps a real store and makes chosen calls of it raise (once, a few
times, or for ever), to test that runs fail closed whatever the store does.

Every fault tool takes one argument, ``query: str`` (default empty), and counts
each time its own code actually ran (:attr:`FaultyTool.executions`): the ground
truth for "this tool never executed", independent of what corral reports.
"""

from corral.testing.faults.models import MALFORMED, FaultyModel, GullibleModel, directive
from corral.testing.faults.stores import FaultyStore
from corral.testing.faults.tools import (
    GARBAGE_KINDS,
    HOSTILE_PAYLOADS,
    STATUS_SCHEMA,
    Execution,
    FaultyTool,
    flaky_tool,
    garbage_tool,
    hanging_tool,
    hostile_tool,
    huge_tool,
    raising_tool,
    slow_tool,
)

__all__ = [
    "GARBAGE_KINDS",
    "HOSTILE_PAYLOADS",
    "MALFORMED",
    "STATUS_SCHEMA",
    "Execution",
    "FaultyModel",
    "FaultyStore",
    "FaultyTool",
    "GullibleModel",
    "directive",
    "flaky_tool",
    "garbage_tool",
    "hanging_tool",
    "hostile_tool",
    "huge_tool",
    "raising_tool",
    "slow_tool",
]
