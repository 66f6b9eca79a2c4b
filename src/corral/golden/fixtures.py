"""Tool fixtures as tools: each a ``corral.tool`` with the fixture's effect, cost and
argument schema, answering from the suite instead of doing anything.

A fixture with ``responses`` answers the first whose ``when`` the call's arguments match
(each named argument equal; no ``when`` matches every call), and fails when none does; one
with a ``sequence`` answers its n-th call with its n-th answer, the last repeating. An
answer's ``error`` is raised as a ``RuntimeError`` (the tool failed: ``tool_error`` for the
model, a retry when the tool allows one).

>>> from corral.golden.suite import ToolFixture
>>> kb = ToolFixture.model_validate({"responses": [
...     {"when": {"q": "refund"}, "returns": "14 days"}, {"returns": "no article"}]})
>>> tool = fixture_tool("kb.search", kb)
>>> tool.effect, tool(q="refund"), tool(q="shipping")
('read', '14 days', 'no article')
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from corral.golden.suite import Answer, ToolFixture
from corral.tools import Tool, tool

#: The argument schema of a fixture that names none: any JSON object.
ANY_ARGUMENTS: Mapping[str, Any] = {"type": "object"}


class FixtureError(RuntimeError):
    """What a fixture tool raises for an answer with ``error`` (or no matching answer)."""


def matches(when: Mapping[str, Any] | None, arguments: Mapping[str, Any]) -> bool:
    """Whether ``arguments`` hold every argument ``when`` names, with the same value."""
    if when is None:
        return True
    return all(k in arguments and arguments[k] == v for k, v in when.items())


def fixture_tool(name: str, fixture: ToolFixture) -> Tool:
    """A fresh tool for ``fixture`` (its own call count: one per run)."""
    lock = threading.Lock()
    calls = [0]

    def answer(arguments: Mapping[str, Any]) -> Answer | None:
        if fixture.sequence:
            with lock:
                n = calls[0]
                calls[0] += 1
            return fixture.sequence[min(n, len(fixture.sequence) - 1)]
        return next((a for a in fixture.responses if matches(a.when, arguments)), None)

    def run(**arguments: Any) -> Any:
        found = answer(arguments)
        if found is None:
            raise FixtureError(f"no answer of the fixture {name} matches the arguments {arguments}")
        if "error" in found.model_fields_set:
            raise FixtureError(found.error)
        return found.returns

    built: Tool = tool(
        run,
        name=name,
        effect=fixture.effect,
        description=fixture.description,
        cost_usd=fixture.cost_usd,
        args_schema=fixture.args_schema or ANY_ARGUMENTS,
    )
    return built


def fixture_tools(fixtures: Mapping[str, ToolFixture]) -> list[Tool]:
    """Fresh tools for ``fixtures``, in order."""
    return [fixture_tool(name, f) for name, f in fixtures.items()]
