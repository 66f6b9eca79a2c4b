"""Every stop reason, reached through the public API: reason, status, detail and text form."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.stores.base import BreakerState, KillSwitchState
from corral.testing import (
    ManualClock,
    MemoryStore,
    ScriptedModel,
    call,
    error,
    final,
    malformed,
    prices,
    raw_call,
    slow,
    truncated,
)

# DESIGN.md, "Stop reasons (closed list; the string values are the contract)", in order.
DESIGN_STOP_REASONS = (
    "ok",
    "max_steps",
    "max_seconds",
    "max_tool_calls",
    "max_tokens",
    "max_usd",
    "tool_denied",
    "approval_denied",
    "approval_timeout",
    "kill_switch",
    "invalid_tool_args",
    "invalid_tool_output",
    "tool_error",
    "dependency_degraded",
    "loop_detected",
    "model_error",
    "invalid_model_output",
    "cancelled",
    "control_plane_unavailable",
    "agent_error",
)

ERROR_REASONS = {
    "agent_error",
    "model_error",
    "tool_error",
    "invalid_model_output",
    "invalid_tool_output",
    "control_plane_unavailable",
}


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    return f"results for {query}"


@corral.tool(name="browser.open", effect="read")
def browser(url: str) -> str:
    """Open a page."""
    return f"<html>{url}</html>"


@corral.tool(name="crm.write", effect="write")
def crm_write(note: str) -> str:
    """Write a note to the CRM."""
    return "saved"


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {
        "tools": {"allow": ["search.read", "crm.write"]},
        "writes": {"require_approval": False},
    }
    data.update(sections)
    return corral.Policy.from_dict(data)


def run_loop(model: ScriptedModel, pol: corral.Policy | None = None, **kw: Any) -> corral.RunResult:
    kw.setdefault("store", MemoryStore())
    kw.setdefault("tools", [search, browser, crm_write])
    return corral.run("find the vendor status", model=model, policy=pol or policy(), **kw)


def assert_stop(
    result: corral.RunResult, reason: str, detail: str, text: str | None = None
) -> corral.StopInfo:
    """The result stopped for ``reason`` with ``detail``, rendered as ``text``."""
    assert result.stop_reason == reason
    assert result.status == ("error" if reason in ERROR_REASONS else "stopped")
    assert not result.ok
    assert result.stop is not None
    assert result.stop.reason == reason
    assert result.stop.detail == detail
    assert str(result.stop) == (text if text is not None else f"{reason}:{detail}")
    assert str(result) == f"{result.status} ({result.stop})"
    return result.stop


def test_stop_reasons_are_designs_closed_list_in_order() -> None:
    """corral.STOP_REASONS is exactly the closed list of DESIGN.md, in the same order."""
    assert corral.STOP_REASONS == DESIGN_STOP_REASONS


def test_stop_reasons_match_the_concepts_doc() -> None:
    """The list of stop reasons in docs/concepts.md is the same closed list, in order."""
    doc = Path(__file__).parent.parent / "docs" / "concepts.md"
    if not doc.exists():
        pytest.skip("docs/concepts.md is not written yet")
    section = doc.read_text(encoding="utf-8").split("## Stop reasons", 1)[1].split("\n\n", 2)[1]
    assert tuple(re.findall(r"`([a-z_]+)`", section)) == DESIGN_STOP_REASONS


def test_ok_has_no_stop_detail() -> None:
    """A run that answers ends ok, with status ok and no stop detail."""
    model = ScriptedModel([call("search.read", query="vendor"), final("the vendor is up")])
    result = run_loop(model)
    assert (result.status, result.stop_reason, result.answer) == ("ok", "ok", "the vendor is up")
    assert result.ok and result.stop is None and result.partial is None
    assert str(result) == "ok (ok)"


def test_max_steps_stops_a_model_that_calls_a_tool_forever() -> None:
    """A model repeating a tool call forever is stopped by max_steps before its next turn."""
    model = ScriptedModel([call("search.read", query="vendor")], repeat_last=True)
    result = run_loop(model, policy(budgets={"max_steps": 2}))
    stop = assert_stop(result, "max_steps", "run", "max_steps:run (limit 2, would be 3)")
    assert (stop.limit, stop.observed, stop.scope) == (2, 3, "run")
    assert len(model.requests) == 2
    assert result.usage.steps == 2


def test_max_seconds_stops_slow_model_turns() -> None:
    """Slow turns on a manual clock stop the run with max_seconds before the next request."""
    clock = ManualClock()
    model = ScriptedModel(
        [slow(call("search.read", query=q), 40) for q in "abc"] + [final("too late")], clock=clock
    )
    result = run_loop(model, policy(budgets={"max_seconds": 90}), clock=clock)
    stop = assert_stop(result, "max_seconds", "run", "max_seconds:run (limit 90, would be 120)")
    assert stop.limit == 90
    assert len(model.requests) == 3


def test_max_seconds_stops_after_a_tool_that_takes_the_time() -> None:
    """A tool that uses up the run's time stops the run at the next step."""
    clock = ManualClock()

    @corral.tool(name="search.read", effect="read")
    def slow_search(query: str) -> str:
        clock.advance(100)
        return "late results"

    pol = policy(budgets={"max_seconds": 90})
    with corral.Run(pol, tools=[slow_search], store=MemoryStore(), clock=clock) as run:
        run.step()
        run.call("search.read", {"query": "vendor"})
        run.step()
    assert_stop(run.result, "max_seconds", "run", "max_seconds:run (limit 90, would be 100)")


def test_max_tool_calls_stops_the_call_that_does_not_fit() -> None:
    """The tool call beyond max_tool_calls is refused and stops the run."""
    model = ScriptedModel([call("search.read", query=q) for q in "abc"] + [final("done")])
    result = run_loop(model, policy(budgets={"max_tool_calls": 2}))
    assert_stop(result, "max_tool_calls", "run", "max_tool_calls:run (limit 2, would be 3)")
    assert result.usage.tool_calls == 2


def test_max_tool_calls_names_a_per_tool_cap() -> None:
    """A per-tool cap (tools.specs.<name>.max_calls) stops with that tool's scope."""
    model = ScriptedModel([call("search.read", query=q) for q in "ab"] + [final("done")])
    pol = policy(tools={"allow": ["search.read"], "specs": {"search.read": {"max_calls": 1}}})
    result = run_loop(model, pol)
    stop = assert_stop(
        result,
        "max_tool_calls",
        "tool/search.read",
        "max_tool_calls:tool/search.read (limit 1, would be 2)",
    )
    assert stop.tool == "search.read"


def test_max_tokens_refuses_a_turn_that_cannot_fit() -> None:
    """budgets.max_tokens refuses a model turn once the reported usage leaves no room."""
    model = ScriptedModel(
        [
            call("search.read", query="a", _input_tokens=200, _output_tokens=900),
            final("never sent"),
        ]
    )
    result = run_loop(model, policy(budgets={"max_tokens": 2000}))
    stop = assert_stop(
        result, "max_tokens", "run", f"max_tokens:run (limit 2000, would be {result.stop.observed})"
    )
    assert stop.limit == 2000 and stop.observed > 2000
    assert len(model.requests) == 1
    assert result.usage.tokens == 1100


def test_max_usd_refuses_a_priced_tool_call() -> None:
    """A priced tool call that would pass max_usd is refused; the text shows the figures."""

    @corral.tool(name="browser.open", effect="read", cost_usd="0.40")
    def paid_browser(url: str) -> str:
        return "page"

    model = ScriptedModel(
        [call("browser.open", url=f"https://x.test/{i}") for i in range(3)] + [final("done")],
        price=prices("0.5", "1"),
    )
    pol = policy(tools={"allow": ["browser.open"]}, budgets={"max_usd": 1.00})
    result = run_loop(model, pol, tools=[paid_browser])
    would_be = result.usage.usd + Decimal("0.40")
    stop = assert_stop(
        result, "max_usd", "run", f"max_usd:run (limit 1.00, would be {would_be.normalize()})"
    )
    assert stop.limit == Decimal("1.00") and stop.observed == would_be
    assert result.usage.tool_calls == 2
    assert Decimal("0.80") < result.usage.usd <= Decimal("1.00")


def test_max_usd_refuses_a_priced_model_turn() -> None:
    """A priced model turn whose worst case no longer fits max_usd is refused before the request."""
    model = ScriptedModel([call("search.read", query="a")], repeat_last=True, price=prices(10, 10))
    result = run_loop(
        model,
        policy(budgets={"max_usd": 0.02, "max_steps": 30}, loops={"repeats": 30, "window": 30}),
    )
    stop = assert_stop(
        result, "max_usd", "run", f"max_usd:run (limit 0.02, would be {_fmt(result)})"
    )
    assert stop.observed > Decimal("0.02")
    assert result.usage.usd <= Decimal("0.02")


def _fmt(result: corral.RunResult) -> str:
    assert result.stop is not None
    return f"{result.stop.observed.normalize()}"


def test_tool_denied_for_a_tool_not_in_the_allowlist() -> None:
    """Calling a registered tool the policy does not allow stops with tool_denied:<tool>."""
    model = ScriptedModel([call("browser.open", url="https://vendor.test"), final("done")])
    result = run_loop(model)
    stop = assert_stop(result, "tool_denied", "browser.open")
    assert stop.tool == "browser.open"
    assert stop.extra["why"] == "not_allowed"
    assert not stop.retryable
    assert result.usage.tool_calls == 0


def test_tool_denied_for_an_unknown_tool_after_the_bound() -> None:
    """A made-up tool name is handed back to the model, then stops with
    ``tool_denied:<name> (unknown_tool)``."""
    model = ScriptedModel([call("vendor.status")], repeat_last=True)
    result = run_loop(model)
    stop = assert_stop(
        result, "tool_denied", "vendor.status", "tool_denied:vendor.status (unknown_tool)"
    )
    assert stop.tool == "vendor.status" and stop.why == "unknown_tool"
    assert len(model.requests) == 3  # two mistakes handed back (tools.max_invalid_args: 2)


def test_invalid_tool_args_after_the_bound() -> None:
    """Invalid arguments are handed back to the model, then stop with invalid_tool_args:<tool>."""
    model = ScriptedModel([raw_call("search.read", '{"query": 3')], repeat_last=True)
    result = run_loop(model)
    stop = assert_stop(result, "invalid_tool_args", "search.read")
    assert stop.tool == "search.read"
    assert "not valid JSON" in stop.message
    assert result.usage.tool_calls == 0


def test_invalid_tool_output_stops_the_run() -> None:
    """An output that breaks the tool's output schema stops with invalid_tool_output:<tool>."""

    @corral.tool(name="search.read", effect="read", output_schema={"type": "object"})
    def bad_search(query: str) -> str:
        return "not an object"

    model = ScriptedModel([call("search.read", query="a"), final("done")])
    result = run_loop(model, tools=[bad_search])
    assert_stop(result, "invalid_tool_output", "search.read")


def test_tool_error_stops_the_run_and_is_retryable() -> None:
    """A tool that raises stops with tool_error:<tool>, which is retryable."""

    @corral.tool(name="search.read", effect="read")
    def failing(query: str) -> str:
        raise ConnectionError("vendor down")

    model = ScriptedModel([call("search.read", query="a"), final("done")])
    result = run_loop(model, tools=[failing])
    stop = assert_stop(result, "tool_error", "search.read")
    assert stop.retryable
    assert "ConnectionError: vendor down" in stop.message
    assert result.usage.tool_calls == 1  # a raised call is charged


def test_model_error_when_the_endpoint_fails() -> None:
    """A model that raises stops with model_error:<model>, which is retryable."""
    result = run_loop(ScriptedModel([error(ConnectionError("503"))]))
    stop = assert_stop(result, "model_error", "scripted")
    assert stop.retryable and "503" in stop.message


@pytest.mark.parametrize(
    ("turn", "text"),
    [
        (malformed("not JSON"), "invalid_model_output:scripted"),
        (truncated("half an ans"), "invalid_model_output:scripted (truncated)"),
    ],
    ids=["malformed", "truncated"],
)
def test_invalid_model_output(turn: Any, text: str) -> None:
    """Unparsable or truncated model output stops with invalid_model_output, naming the model."""
    result = run_loop(ScriptedModel([turn]))
    stop = assert_stop(result, "invalid_model_output", "scripted", text)
    assert not stop.retryable


def test_truncated_output_keeps_the_partial_text() -> None:
    """The text of a truncated answer is kept as the result's partial."""
    result = run_loop(ScriptedModel([truncated("half an ans")]))
    assert result.partial == "half an ans" and result.answer is None


def test_cancelled_by_run_cancel() -> None:
    """Run.cancel() makes the next step stop with cancelled:run."""
    with corral.Run(policy(), tools=[search], store=MemoryStore()) as run:
        run.step()
        run.cancel()
        run.step()
        pytest.fail("the step after cancel() must raise")  # pragma: no cover
    stop = assert_stop(run.result, "cancelled", "run")
    assert run.result.usage.steps == 1
    assert not stop.retryable


def test_cancelled_by_cancelling_the_task_running_arun() -> None:
    """Cancelling the asyncio task running arun re-raises CancelledError; the run is cancelled."""
    started = asyncio.Event()
    runs: list[corral.AsyncRun] = []

    @corral.tool(name="search.read", effect="read")
    async def hanging(query: str) -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    async def main() -> None:
        model = ScriptedModel([call("search.read", query="a"), final("done")])
        task = asyncio.create_task(
            corral.arun(
                "t",
                model=model,
                tools=[hanging],
                policy=policy(),
                store=MemoryStore(),
                on_run=runs.append,
            )
        )
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert_stop(runs[0].result, "cancelled", "run")


def test_agent_error_is_recorded_and_re_raised() -> None:
    """An exception from user code inside the block is recorded as agent_error and re-raised."""
    store = MemoryStore()
    with (
        pytest.raises(ValueError, match="bad parsing"),
        corral.Run(policy(), tools=[search], store=store) as run,
    ):
        run.step()
        raise ValueError("bad parsing")
    assert_stop(run.result, "agent_error", "ValueError")
    assert run.result.error == "ValueError: bad parsing"
    record = store.get_run(run.id)
    assert record is not None and record.stop_reason == "agent_error"


def test_kill_switch_stops_the_model_turn() -> None:
    """A stop_all kill switch in the store refuses the first model turn (kill_switch:model)."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all", reason="incident"))
    model = ScriptedModel([final("done")])
    result = run_loop(model, store=store)
    stop = assert_stop(result, "kill_switch", "model")
    assert "incident" in stop.message
    assert model.requests == []


def test_kill_switch_stops_a_write_under_disable_writes() -> None:
    """A global switch in the policy's disable_writes mode refuses a write: kill_switch:<tool>."""
    store = MemoryStore()
    with corral.Run(policy(), tools=[search, crm_write], store=store) as run:
        run.call("search.read", {"query": "a"})
        store.set_kill_switch(KillSwitchState(scope="global"))
        run.call("crm.write", {"note": "hello"})
    stop = assert_stop(run.result, "kill_switch", "crm.write")
    assert stop.scope == "global"


def test_control_plane_unavailable_when_the_store_fails_from_the_start() -> None:
    """A store that cannot be reached refuses the run: control_plane_unavailable, no exception."""
    store = MemoryStore()
    store.fail = True
    model = ScriptedModel([final("done")])
    result = run_loop(model, store=store)
    stop = assert_stop(result, "control_plane_unavailable", "store")
    assert stop.retryable
    assert model.requests == []


def test_control_plane_unavailable_when_the_store_fails_mid_run() -> None:
    """A store failing during a run stops it at the next governed action."""
    store = MemoryStore()
    with corral.Run(policy(), tools=[search], store=store) as run:
        run.call("search.read", {"query": "a"})
        store.fail = True
        run.call("search.read", {"query": "b"})
    assert_stop(run.result, "control_plane_unavailable", "store")


def test_approval_denied_by_the_approver() -> None:
    """A write the approver refuses stops with approval_denied:<tool> and never executes."""
    executed: list[str] = []

    @corral.tool(name="crm.write", effect="write")
    def recording_write(note: str) -> str:
        executed.append(note)
        return "saved"

    def approver(request: corral.ApprovalRequest) -> corral.ApprovalDecision:
        return corral.ApprovalDecision(approved=False, approver="oncall", reason="not today")

    model = ScriptedModel([call("crm.write", note="refund"), final("done")])
    pol = policy(writes={"require_approval": True})
    result = run_loop(model, pol, tools=[recording_write], approver=approver)
    stop = assert_stop(result, "approval_denied", "crm.write")
    assert "not today" in stop.message
    assert executed == []


def test_approval_timeout_when_no_decision_comes_in_time() -> None:
    """A decision slower than writes.approval_timeout_seconds stops with approval_timeout."""
    clock = ManualClock()

    def slow_approver(request: corral.ApprovalRequest) -> bool:
        clock.advance(request.timeout + 1)
        return True

    model = ScriptedModel([call("crm.write", note="refund"), final("done")])
    pol = policy(writes={"require_approval": True})
    result = run_loop(model, pol, approver=slow_approver, clock=clock)
    stop = assert_stop(result, "approval_timeout", "crm.write")
    assert stop.retryable


def test_dependency_degraded_when_the_breaker_is_open() -> None:
    """A tool whose breaker is open in the store stops with dependency_degraded:<tool>."""
    clock = ManualClock()
    store = MemoryStore()
    store.set_breaker("search.read", BreakerState(state="open", until=clock.monotonic() + 30))
    model = ScriptedModel([call("search.read", query="a"), final("done")])
    result = run_loop(model, policy(degrade={"on_degraded": "stop"}), store=store, clock=clock)
    stop = assert_stop(result, "dependency_degraded", "search.read")
    assert stop.retryable and stop.retry_after == 30
