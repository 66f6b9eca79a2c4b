"""What corral hands back survives ``pickle`` and ``copy.deepcopy`` whole: results, usage,
stops and every exception cross process boundaries (a worker pool, a task queue, a
framework that copies state)."""

from __future__ import annotations

import copy
import inspect
import pickle
from decimal import Decimal
from typing import Any

import pytest

import corral
import corral.exceptions
from corral.testing import ScriptedModel, call, final


@corral.tool(name="kb.read", effect="read", cost_usd=0.01)
def kb_read(query: str) -> str:
    return "answer for " + query


POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"max_calls": 2}}},
        "budgets": {"max_steps": 5, "max_usd": 1},
    }
)


def finished() -> corral.RunResult:
    model = ScriptedModel([call("kb.read", query="a"), final("the answer")])
    return corral.run("task", model=model, tools=[kb_read], policy=POLICY, store="memory://")


def stopped() -> corral.RunResult:
    model = ScriptedModel([call("kb.read", query=f"q{i}") for i in range(5)])
    return corral.run("task", model=model, tools=[kb_read], policy=POLICY, store="memory://")


def values() -> list[Any]:
    ok, stop = finished(), stopped()
    assert ok.usage.tool_calls_by_tool and stop.stop is not None
    return [
        ok,
        stop,
        ok.usage,
        stop.stop,
        corral.Limits(max_usd=Decimal("2.5"), tool_caps={"kb.read": 3}),
        corral.Usage(tool_calls=2, tool_calls_by_tool={"kb.read": 2}, usd=Decimal("0.02")),
        corral.Charge(tool_calls=1, usd=Decimal("0.01"), tool="kb.read"),
        corral.CallInfo(tool="kb.read", outcome="executed", idempotency_key=None),
        corral.ApprovalDecision(approved=True, approver="alice", reason="fine"),
        corral.Price(input_usd_per_mtok=Decimal("1"), output_usd_per_mtok=Decimal("2")),
        corral.ToolCallRequest(name="kb.read", arguments={"query": "a"}, id="c1"),
        corral.ModelResponse(text="hi", tool_calls=[], input_tokens=3, output_tokens=4),
        POLICY,
    ]


def same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, BaseException):
        assert str(a) == str(b) and a.args == b.args and vars(a) == vars(b)
    else:
        assert a == b


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_results_and_values_survive_pickle_and_copy(how: str) -> None:
    for value in values():
        back = pickle.loads(pickle.dumps(value)) if how == "pickle" else copy.deepcopy(value)
        same(value, back)


def exceptions() -> dict[type[BaseException], BaseException]:
    made: dict[type[BaseException], BaseException] = {
        corral.Stop: corral.Stop("max_usd", "run", message="spent", limit=1, observed=2),
        corral.ToolRejected: corral.ToolRejected(
            "invalid_tool_args", "Invalid arguments", tool="kb.read", detail="d"
        ),
        corral.PolicyError: corral.PolicyError(["budgets: bad", "tools: bad"], source="p.yaml"),
        corral.ModelOutputError: corral.ModelOutputError("truncated"),
    }
    for name, cls in inspect.getmembers(corral.exceptions, inspect.isclass):
        if issubclass(cls, corral.CorralError) and cls not in made:
            made[cls] = cls(f"a {name}")
    return made


def test_every_exception_survives_pickle_and_copy() -> None:
    found = exceptions()
    # Every exception class corral defines is covered (a new one is picked up here).
    ours = {
        cls
        for _, cls in inspect.getmembers(corral.exceptions, inspect.isclass)
        if issubclass(cls, corral.CorralError)
    }
    assert ours <= set(found)
    for error in found.values():
        for back in (pickle.loads(pickle.dumps(error)), copy.deepcopy(error)):
            same(error, back)


def test_a_stop_keeps_its_run_and_info_across_pickle() -> None:
    with corral.Run(POLICY, tools=[kb_read], store="memory://") as run:
        for i in range(3):
            try:
                run.call("kb.read", {"query": f"q{i}"})
            except corral.Stop as stop:
                caught = stop
    back = pickle.loads(pickle.dumps(caught))
    assert back.run_id == run.id and back.info == caught.info and back.reason == "max_tool_calls"
