"""Tools described only by the policy (remote tools): authorize, execute elsewhere, report.

No ``@corral.tool`` function exists for them; ``tools.specs.<name>.args_schema`` says what
their arguments are, and the rest of the spec what they cost and do.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

import corral
from corral.testing import MemoryStore, ScriptedModel, call, final

FETCH_SCHEMA = {
    "type": "object",
    "properties": {"url": {"type": "string"}},
    "required": ["url"],
    "additionalProperties": False,
}


def remote_policy(**spec: Any) -> corral.Policy:
    """A policy allowing ``vendor.fetch``, a read served by a remote service."""
    fields: dict[str, Any] = {
        "effect": "read",
        "description": "Fetch a vendor status page.",
        "args_schema": FETCH_SCHEMA,
        "cost_usd": 0.25,
        **spec,
    }
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["vendor.fetch"], "specs": {"vendor.fetch": fields}},
            "budgets": {"max_usd": 1},
        }
    )


def test_a_policy_described_tool_is_authorized_and_reported_without_a_function() -> None:
    """authorize → execute elsewhere → report works for a tool no code registered: the
    observation is cleaned and the spec's cost is charged."""
    with corral.Run(remote_policy(), store=MemoryStore()) as run:
        ticket = run.authorize("vendor.fetch", {"url": "https://status.vendor.example"})
        assert (ticket.tool, dict(ticket.arguments)) == (
            "vendor.fetch",
            {"url": "https://status.vendor.example"},
        )
        assert ticket.context is not None and ticket.context.tool == "vendor.fetch"
        assert run.report(ticket, "<p>all <b>good</b></p>") == "all\ngood"
        run.finish("up")
    assert run.result.stop_reason == "ok"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.25"))


def test_a_policy_described_tool_is_offered_with_its_description_and_schema() -> None:
    """tool_specs offers the tool as the policy describes it, in the formats models take."""
    with corral.Run(remote_policy(), store=MemoryStore()) as run:
        (spec,) = run.tool_specs("openai")
    assert spec["function"] == {
        "name": "vendor__fetch",
        "description": "Fetch a vendor status page.",
        "parameters": FETCH_SCHEMA,
    }


def test_arguments_of_a_policy_described_tool_are_checked_against_its_schema() -> None:
    """Arguments outside args_schema are handed back like any invalid arguments."""
    with corral.Run(remote_policy(), store=MemoryStore()) as run:
        with pytest.raises(corral.ToolRejected) as refused:
            run.authorize("vendor.fetch", {"link": "x"})
        assert refused.value.reason == "invalid_tool_args"
        run.finish()
    assert run.result.usage.tool_calls == 0


def test_run_call_refuses_a_policy_described_tool_and_says_how_to_use_it() -> None:
    """run.call cannot execute what has no function: a ConfigError naming authorize and
    report, before anything is charged."""
    run = corral.Run(remote_policy(), store=MemoryStore())
    with pytest.raises(corral.ConfigError, match=r"run\.authorize.*run\.report"):
        run.call("vendor.fetch", {"url": "https://status.vendor.example"})
    assert run.usage.tool_calls == 0


def test_a_failure_reported_for_a_policy_described_tool_stops_with_tool_error() -> None:
    """report_failure charges the attempt and stops the run with tool_error."""
    with corral.Run(remote_policy(), store=MemoryStore()) as run:
        ticket = run.authorize("vendor.fetch", {"url": "https://status.vendor.example"})
        run.report_failure(ticket, ConnectionError("vendor down"))
    assert str(run.result.stop) == "tool_error:vendor.fetch"
    assert run.result.usage.usd == Decimal("0.25")


def test_a_policy_described_write_is_approved_and_keyed_before_the_caller_runs_it() -> None:
    """A described write without an effect in code asks the approver, gets an idempotency
    key, and its ticket's context carries the key and the credentials it declares."""
    asked: list[str] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        asked.append(request.tool)
        return True

    policy = remote_policy(effect="write", credentials=["api_key"])
    creds = {"vendor.fetch": {"api_key": "k-123"}}
    with corral.Run(policy, store=MemoryStore(), approver=approver, credentials=creds) as run:
        ticket = run.authorize("vendor.fetch", {"url": "https://x.example"}, call_id="c1")
        assert asked == ["vendor.fetch"]
        ctx = ticket.context
        assert ctx is not None and ticket.idempotency_key
        assert (ctx.idempotency_key, dict(ctx.credentials)) == (
            ticket.idempotency_key,
            {"api_key": "k-123"},
        )
        run.report(ticket, {"ticket": 7})
        run.finish()
    assert run.result.stop_reason == "ok"


def test_async_runs_govern_policy_described_tools_too() -> None:
    """AsyncRun.authorize and report work the same for a described tool."""

    async def main() -> corral.RunResult:
        async with corral.AsyncRun(remote_policy(), store=MemoryStore()) as run:
            ticket = await run.authorize("vendor.fetch", {"url": "https://a.example"})
            assert await run.report(ticket, "ok") == "ok"
            await run.finish("done")
        return run.result

    assert asyncio.run(main()).usage.tool_calls == 1


def test_the_bounded_loop_does_not_offer_a_tool_it_could_not_run() -> None:
    """corral.run has no function for a described tool: it is not offered, a call to it is
    an unknown tool, and the start warning says how to govern it instead."""
    model = ScriptedModel(
        [call("vendor.fetch", url="https://status.vendor.example"), final("done")]
    )
    store = MemoryStore()
    result = corral.run("status?", model=model, tools=[], policy=remote_policy(), store=store)
    assert result.stop_reason == "ok"
    assert not model.requests[0].tools
    events = store.events(result.run_id)
    warnings = [e.data["message"] for e in events if e.kind == "warning"]
    assert any("Run.authorize and Run.report" in w for w in warnings)
    denied = [e.data for e in events if e.kind == "denied"]
    assert denied and denied[0]["why"] == "unknown_tool"


def test_a_tool_given_in_code_wins_over_the_policys_description() -> None:
    """When code provides the tool, run.call executes it; the policy's description is
    what the model is offered."""

    @corral.tool(name="vendor.fetch", effect="read")
    def fetch(url: str) -> str:
        """Fetch a page (the code's words)."""
        return "page"

    with corral.Run(remote_policy(), tools=[fetch], store=MemoryStore()) as run:
        assert run.tool_specs("neutral")[0]["description"] == "Fetch a vendor status page."
        assert run.call("vendor.fetch", {"url": "https://a.example"}) == "page"
        run.finish()
    assert run.result.stop_reason == "ok"
