"""The gateway is a part any surface can drive: a run state made by
``gateway.lifecycle.open_run`` and a flow from ``gateway.chain.call_flow``, driven by a
loop of one's own that answers the flow's ops (as an HTTP handler or an MCP proxy would,
executing the tool elsewhere) — with no ``Run`` object. Every guard, charge and record is
the same as through ``Run.call``."""

from __future__ import annotations

from typing import Any

import pytest

import corral
from corral.gateway import lifecycle
from corral.gateway.chain import call_flow
from corral.gateway.ops import Attempt, Execute, Flow, Sleep
from corral.testing import MemoryStore


def drive(flow: Flow, execute: Any) -> Any:
    """A driver of one's own: answers ``Execute`` with ``execute(op)``, sleeps not at all."""
    answer: Any = None
    try:
        while True:
            op = flow.send(answer)
            if isinstance(op, Execute):
                try:
                    answer = Attempt(ok=True, value=execute(op))
                except Exception as exc:
                    answer = Attempt(ok=False, error=exc)
            elif isinstance(op, Sleep):
                answer = None
            else:
                raise AssertionError(f"unexpected op {op!r}")
    except StopIteration as done:
        return done.value


@corral.tool(name="kb.read", effect="read", cost_usd=0.25)
def kb_read(query: str) -> str:
    raise AssertionError("executed by the driver, never here")


@corral.tool(name="ledger.write", effect="write", cost_usd=1)
def ledger_write(entry: str) -> str:
    raise AssertionError("executed by the driver, never here")


@corral.tool(name="shell.exec", effect="write")
def shell_exec(command: str) -> str:
    raise AssertionError("not allowed: never executed")


POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["kb.read", "ledger.write"], "specs": {"kb.read": {"cache": False}}},
        "writes": {"require_approval": False},
        "budgets": {"max_tool_calls": 3, "max_usd": 10},
    }
)


def test_a_surface_of_its_own_drives_the_same_chain() -> None:
    store = MemoryStore()
    state = lifecycle.open_run(
        POLICY,
        tools={"kb.read": kb_read, "ledger.write": ledger_write, "shell.exec": shell_exec},
        store=store,
    )
    remote: list[tuple[str, dict[str, Any]]] = []

    def execute(op: Execute) -> str:
        remote.append((op.eff.tool.name, dict(op.args)))
        return f"done {op.args}"

    assert drive(call_flow(state, "kb.read", {"query": "status"}), execute) == (
        "done {'query': 'status'}"
    )
    # A write, keyed by the caller: executed once, then replayed from its key for free.
    first = drive(call_flow(state, "ledger.write", {"entry": "A"}, key="K-1"), execute)
    again = drive(call_flow(state, "ledger.write", {"entry": "A"}, key="K-1"), execute)
    assert first == again and len(remote) == 2
    usage = state.budget.usage()
    assert (usage.tool_calls, usage.usd) == (2, 1.25)
    # The allowlist and the budgets hold as they do for Run.call.
    with pytest.raises(corral.Stop) as denied:
        drive(call_flow(state, "shell.exec", {"command": "rm -rf /"}), execute)
    assert denied.value.info.reason == "tool_denied"
    assert lifecycle.close(state, "tool_denied") is None
    kinds = [e.kind for e in store.events(state.id)]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert [e.data["outcome"] for e in store.events(state.id) if e.kind == "tool_call"] == [
        "ok",
        "ok",
        "replayed",
    ]


def test_a_failure_reported_by_the_surface_is_charged_and_stops_the_run() -> None:
    state = lifecycle.open_run(POLICY, tools={"kb.read": kb_read}, store=MemoryStore())

    def fails(op: Execute) -> str:
        raise TimeoutError("the remote tool did not answer")

    with pytest.raises(corral.Stop) as stopped:
        drive(call_flow(state, "kb.read", {"query": "x"}), fails)
    assert stopped.value.info.reason == "tool_error"
    # Each attempt (the first and its retries) cost a call and the declared USD.
    usage = state.budget.usage()
    assert usage.tool_calls >= 1 and usage.usd == usage.tool_calls * 0.25
    assert state.stop is not None and state.stop.reason == "tool_error"
