"""``corral.Run``: governing a loop you already have, through the public API."""

from __future__ import annotations

import contextlib
import logging
from decimal import Decimal
from typing import Any

import pytest

import corral
from corral.stores.base import BreakerState, KillSwitchState
from corral.testing import ManualClock, MemoryStore, prices


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search the knowledge base."""
    return f"results for {query}"


@corral.tool(name="kb.read", effect="read")
def kb(topic: str) -> str:
    """Read a knowledge-base article."""
    return f"article on {topic}"


@corral.tool(name="crm.write", effect="write")
def crm_write(note: str) -> str:
    """Write a note to the CRM."""
    return "saved"


TOOLS = [search, kb, crm_write]


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {
        "tools": {"allow": ["search.read", "kb.read", "crm.write"]},
        "writes": {"require_approval": False},
    }
    data.update(sections)
    return corral.Policy.from_dict(data)


def new_run(pol: corral.Policy | None = None, **kw: Any) -> corral.Run:
    kw.setdefault("store", MemoryStore())
    kw.setdefault("tools", TOOLS)
    return corral.Run(pol or policy(), **kw)


# -- the block and its result ---------------------------------------------------------------


def test_step_call_finish_gives_an_ok_result_with_usage() -> None:
    """step, call and finish inside the block give an ok result with the answer and usage."""
    with new_run(tenant="acme", agent="support-bot") as run:
        run.step()
        obs = run.call("search.read", {"query": "vendor status"})
        run.finish(obs)
    result = run.result
    assert (result.status, result.stop_reason, result.answer) == (
        "ok",
        "ok",
        "results for vendor status",
    )
    assert result.run_id == run.id
    assert (result.usage.steps, result.usage.tool_calls) == (1, 1)
    assert result.usage.tool_calls_by_tool == {"search.read": 1}


def test_leaving_the_block_without_finish_is_ok_without_answer() -> None:
    """A block left normally without finish() ends ok, with no answer."""
    with new_run() as run:
        run.step()
    assert (run.result.stop_reason, run.result.answer) == ("ok", None)


def test_finish_returns_the_result_and_a_second_finish_the_same() -> None:
    """finish() returns the result at once; calling it again returns the same result."""
    with new_run() as run:
        first = run.finish("answer")
        assert run.result is first
        assert run.finish("other") is first
    assert run.result is first and first.answer == "answer"


def test_finish_turns_a_non_text_answer_into_text() -> None:
    """An answer that is not a string is kept as its text."""
    with new_run() as run:
        run.finish(42)
    assert run.result.answer == "42"


def test_result_before_the_end_is_a_config_error() -> None:
    """Reading run.result before the run has ended is a ConfigError that says what to do."""
    with new_run() as run, pytest.raises(corral.ConfigError, match="not ended"):
        _ = run.result


def test_calling_after_finish_is_a_config_error() -> None:
    """After finish(), step and call raise ConfigError and the result stays ok."""
    with new_run() as run:
        run.finish("done")
        with pytest.raises(corral.ConfigError, match="finished"):
            run.call("search.read", {"query": "a"})
        with pytest.raises(corral.ConfigError, match="finished"):
            run.step()
    with pytest.raises(corral.ConfigError):
        run.step()
    assert run.result.stop_reason == "ok"
    assert run.result.usage.tool_calls == 0


def test_an_exception_after_finish_propagates_and_keeps_the_result() -> None:
    """An exception raised after finish() inside the block is re-raised; the result stays ok."""
    with pytest.raises(RuntimeError), new_run() as run:
        run.finish("done")
        raise RuntimeError("after the end")
    assert run.result.stop_reason == "ok" and run.result.error is None


def test_policy_must_be_a_policy_object() -> None:
    """Passing something other than a corral.Policy is a ConfigError at start."""
    with pytest.raises(corral.ConfigError, match=r"corral\.Policy"):
        corral.Run({"tools": {}}, store=MemoryStore())  # type: ignore[arg-type]


def test_approvals_without_an_approval_channel_are_a_config_error_at_start() -> None:
    """A policy needing approvals with no approver is refused when the run starts."""
    with pytest.raises(corral.ConfigError, match="approval"):
        new_run(policy(writes={"require_approval": True}))


def test_default_budgets_bound_a_loop_that_never_ends() -> None:
    """A policy naming no budgets still stops an endless loop at 30 steps."""
    with new_run(corral.Policy.from_dict({})) as run:
        while True:
            run.step()
    assert str(run.result.stop) == "max_steps:run (limit 30, would be 31)"
    assert run.result.usage.steps == 30


# -- stops, rejections and exceptions leaving the block ---------------------------------------


def test_a_stop_of_this_run_is_recorded_and_suppressed() -> None:
    """A Stop raised by this run ends the block quietly; run.result says why."""
    reached = []
    with new_run(policy(budgets={"max_tool_calls": 1})) as run:
        run.call("search.read", {"query": "a"})
        run.call("search.read", {"query": "b"})
        reached.append("after")  # pragma: no cover
    assert reached == []
    assert run.result.status == "stopped"
    assert str(run.result.stop) == "max_tool_calls:run (limit 1, would be 2)"


def test_a_stop_caught_by_the_code_still_ends_the_run() -> None:
    """A caught Stop is final: later calls raise it again and the result is not ok."""
    with new_run(policy(budgets={"max_tool_calls": 1})) as run:
        run.call("search.read", {"query": "a"})
        with pytest.raises(corral.Stop) as first:
            run.call("search.read", {"query": "b"})
        with pytest.raises(corral.Stop) as again:
            run.step()
        assert again.value.reason == first.value.reason == "max_tool_calls"
        with pytest.raises(corral.Stop):
            run.finish("pretend all is well")
    assert run.result.stop_reason == "max_tool_calls"
    assert run.result.status == "stopped"
    assert run.result.usage.steps == 0


def test_a_caught_stop_then_leaving_normally_is_not_ok() -> None:
    """Leaving the block normally after catching a Stop ends the run with that stop."""
    with new_run(policy(budgets={"max_steps": 1})) as run:
        run.step()
        with contextlib.suppress(corral.Stop):
            run.step()
    assert run.result.stop_reason == "max_steps"


def test_an_unhandled_tool_rejected_stops_the_run_with_its_reason() -> None:
    """A ToolRejected the code does not handle stops the run with the rejection's reason."""
    with new_run() as run:
        run.call("search.read", {"q": "wrong argument name"})
    assert run.result.stop_reason == "invalid_tool_args"
    assert run.result.stop is not None and run.result.stop.tool == "search.read"
    assert "query" in run.result.stop.message


def test_a_handled_tool_rejected_lets_the_run_go_on() -> None:
    """A ToolRejected the code handles is a message for the model; the run continues."""
    with new_run() as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("search.read", {"q": "wrong"})
        assert rejected.value.reason == "invalid_tool_args"
        assert "Fix them" in rejected.value.message
        assert run.call("search.read", {"query": "right"}) == "results for right"
        run.finish("ok")
    assert run.result.stop_reason == "ok"


def test_an_unknown_tool_is_rejected_listing_the_tools_on_offer() -> None:
    """A name no code registered is rejected with the tools on offer, then denied."""
    with new_run() as run:
        for _ in range(2):
            with pytest.raises(corral.ToolRejected) as rejected:
                run.call("vendor.status", {})
            assert "crm.write, kb.read, search.read" in rejected.value.message
        run.call("vendor.status", {})
    assert str(run.result.stop) == "tool_denied:vendor.status (unknown_tool)"


def test_an_other_exception_is_agent_error_and_re_raised() -> None:
    """Any other exception inside the block is recorded as agent_error and re-raised."""
    with pytest.raises(KeyError), new_run() as run:
        run.step()
        raise KeyError("missing")
    assert run.result.stop_reason == "agent_error" and run.result.status == "error"
    assert run.result.error == "KeyError: 'missing'"
    assert run.result.usage.steps == 1


def test_a_stop_of_another_run_is_agent_error_here() -> None:
    """A Stop that belongs to another run is this run's agent_error, and is re-raised."""
    with pytest.raises(corral.Stop), new_run() as outer:
        inner_stop = None
        with new_run(policy(budgets={"max_steps": 1})) as other:
            other.step()
            try:
                other.step()
            except corral.Stop as exc:
                inner_stop = exc
        assert inner_stop is not None
        raise inner_stop
    assert outer.result.stop_reason == "agent_error"
    assert other.result.stop_reason == "max_steps"


def test_a_stop_raised_by_user_code_is_this_runs() -> None:
    """A Stop the code raises itself (not owned by another run) ends this run with its reason."""
    with new_run() as run:
        raise corral.Stop("loop_detected", "own-check", message="the agent repeats itself")
    assert str(run.result.stop) == "loop_detected:own-check"


def test_keyboard_interrupt_is_cancelled_and_re_raised() -> None:
    """KeyboardInterrupt inside the block ends the run as cancelled and is re-raised."""
    with pytest.raises(KeyboardInterrupt), new_run() as run:
        run.step()
        raise KeyboardInterrupt
    assert run.result.stop_reason == "cancelled" and run.result.status == "stopped"


def test_cancel_then_leaving_the_block_is_cancelled() -> None:
    """A run cancelled and left without another action still ends as cancelled."""
    with new_run() as run:
        run.step()
        run.cancel()
    assert str(run.result.stop) == "cancelled:run"


# -- the run record and the trace -------------------------------------------------------------


def test_the_run_record_has_status_stop_reason_and_usage() -> None:
    """The store's run record holds tenant, agent, status, stop reason, stop and usage."""
    store = MemoryStore()
    with new_run(
        policy(budgets={"max_tool_calls": 1}),
        store=store,
        tenant="acme",
        agent="bot",
        task="find it",
    ) as run:
        run.step()
        run.call("search.read", {"query": "a"})
        run.call("search.read", {"query": "b"})
    record = store.get_run(run.id)
    assert record is not None
    assert (record.tenant, record.agent, record.task) == ("acme", "bot", "find it")
    assert (record.status, record.stop_reason) == ("stopped", "max_tool_calls")
    assert record.stop is not None
    assert record.stop["text"] == "max_tool_calls:run (limit 1, would be 2)"
    assert (record.usage["steps"], record.usage["tool_calls"]) == (1, 1)
    assert record.ended_at is not None


def test_the_trace_records_start_steps_calls_and_end_in_order() -> None:
    """The run's events go from run_start to run_end, numbered in order."""
    store = MemoryStore()
    with new_run(store=store) as run:
        run.step()
        run.call("search.read", {"query": "a"})
        run.finish("done")
    events = store.events(run.id)
    assert [e.kind for e in events] == ["run_start", "step", "tool_call", "run_end"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[-1].data["stop_reason"] == "ok"


def test_an_allowed_tool_no_code_registered_is_warned_about_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tool allowed by the policy but given to the run by no code is a warning at start."""
    store = MemoryStore()
    with (
        caplog.at_level(logging.WARNING, logger="corral"),
        new_run(store=store, tools=[search]) as run,
    ):
        run.finish()
    warned = [e.data["tool"] for e in store.events(run.id) if e.kind == "warning"]
    assert warned == ["kb.read", "crm.write"]
    assert "kb.read" in caplog.text


# -- resume -----------------------------------------------------------------------------------


def test_resume_by_run_id_continues_counting_steps_and_tool_calls() -> None:
    """A second Run with the same run_id and store continues from the first's usage."""
    store = MemoryStore()
    pol = policy(budgets={"max_tool_calls": 3})
    with new_run(pol, store=store, run_id="run-resume-1") as first:
        first.step()
        first.call("search.read", {"query": "a"})
        first.call("search.read", {"query": "b"})
    assert first.result.stop_reason == "ok"
    with new_run(pol, store=store, run_id="run-resume-1") as second:
        assert (second.usage.steps, second.usage.tool_calls) == (1, 2)
        second.step()
        second.call("search.read", {"query": "c"})
        second.call("search.read", {"query": "d"})
    assert str(second.result.stop) == "max_tool_calls:run (limit 3, would be 4)"
    assert (second.result.usage.steps, second.result.usage.tool_calls) == (2, 3)
    record = store.get_run("run-resume-1")
    assert record is not None and record.stop_reason == "max_tool_calls"


def test_resume_continues_the_trace_numbering() -> None:
    """Events of a resumed run continue the first run's numbering."""
    store = MemoryStore()
    for _ in range(2):
        with new_run(store=store, run_id="run-resume-2") as run:
            run.step()
    seqs = [e.seq for e in store.events("run-resume-2")]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.kind for e in store.events("run-resume-2")].count("run_start") == 2


def test_resume_does_not_repeat_a_write() -> None:
    """A write done before a resume is replayed, not executed again, with the same arguments."""
    store = MemoryStore()
    sent: list[str] = []

    @corral.tool(name="crm.write", effect="write")
    def send(note: str) -> str:
        sent.append(note)
        return f"sent {note}"

    for _ in range(2):
        with new_run(store=store, run_id="run-resume-3", tools=[send]) as run:
            assert run.call("crm.write", {"note": "refund"}) == "sent refund"
    assert sent == ["refund"]
    assert run.result.usage.tool_calls == 1


def test_resume_of_another_tenants_run_is_refused() -> None:
    """A run id belonging to another tenant cannot be resumed."""
    store = MemoryStore()
    with new_run(store=store, run_id="run-resume-4", tenant="acme") as run:
        run.step()
    with pytest.raises(corral.ConfigError, match="another tenant"):
        new_run(store=store, run_id="run-resume-4", tenant="globex")


# -- time -------------------------------------------------------------------------------------


def test_usage_reports_active_and_waiting_seconds_separately() -> None:
    """Time waiting for an approval is reported as waiting and not charged to max_seconds."""
    clock = ManualClock()

    def approver(request: corral.ApprovalRequest) -> bool:
        clock.advance(120)
        return True

    pol = policy(writes={"require_approval": True}, budgets={"max_seconds": 90})
    with new_run(pol, clock=clock, approver=approver) as run:
        clock.advance(5)
        run.call("crm.write", {"note": "refund"})
        clock.advance(5)
        run.step()
        run.finish("done")
    usage = run.result.usage
    assert run.result.stop_reason == "ok"
    assert usage.waiting_seconds == 120
    assert usage.active_seconds == 10
    assert usage.seconds == 130


# -- tool specs -------------------------------------------------------------------------------


def test_tool_specs_openai_shape_with_wire_names() -> None:
    """OpenAI specs are function entries with wire-safe names (dots become __)."""
    with new_run() as run:
        specs = run.tool_specs("openai")
    by_name = {s["function"]["name"]: s for s in specs}
    assert sorted(by_name) == ["crm__write", "kb__read", "search__read"]
    entry = by_name["search__read"]
    assert entry["type"] == "function"
    assert entry["function"]["description"] == "Search the knowledge base."
    params = entry["function"]["parameters"]
    assert params["type"] == "object" and params["required"] == ["query"]
    assert params["properties"]["query"]["type"] == "string"


def test_tool_specs_anthropic_shape_with_wire_names() -> None:
    """Anthropic specs carry name, description and input_schema."""
    with new_run() as run:
        specs = run.tool_specs("anthropic")
    entry = next(s for s in specs if s["name"] == "kb__read")
    assert set(entry) == {"name", "description", "input_schema"}
    assert entry["input_schema"]["required"] == ["topic"]


def test_tool_name_maps_a_wire_name_back() -> None:
    """run.tool_name() maps a wire name to the tool's name; others pass through unchanged."""
    with new_run() as run:
        run.tool_specs("openai")
        assert run.tool_name("search__read") == "search.read"
        assert run.tool_name("made_up") == "made_up"
        assert run.call(run.tool_name("search__read"), {"query": "x"}) == "results for x"


def test_tool_specs_leave_out_not_allowed_kill_switched_and_degraded_tools() -> None:
    """Only tools on offer are listed: allowed, not kill-switched, not degraded."""
    store = MemoryStore()
    clock = ManualClock()
    pol = policy(tools={"allow": ["search.read", "crm.write", "kb.read"]})
    with new_run(pol, store=store, clock=clock) as run:
        assert [s["name"] for s in run.tool_specs("neutral")] == [
            "crm.write",
            "kb.read",
            "search.read",
        ]
        store.set_kill_switch(KillSwitchState(scope="global", mode="disable_writes"))
        store.set_breaker("kb.read", BreakerState(state="open", until=clock.monotonic() + 60))
        assert [s["name"] for s in run.tool_specs("anthropic")] == ["search__read"]
        run.finish()
    assert run.result.stop_reason == "ok"  # listing tools is not a stop


def test_tool_specs_leave_out_tools_the_policy_does_not_allow() -> None:
    """A registered tool missing from the allowlist is not offered."""
    with new_run(policy(tools={"allow": ["search.read"]})) as run:
        assert [s["name"] for s in run.tool_specs("neutral")] == ["search.read"]


def test_tool_specs_unknown_format_is_a_config_error() -> None:
    """An unknown spec format is a ConfigError, also with no tools to list."""
    with new_run(tools=[]) as run, pytest.raises(corral.ConfigError, match="format"):
        run.tool_specs("gemini")  # type: ignore[arg-type]


# -- wrapped model calls ------------------------------------------------------------------------


PRICED = {"models": {"prices": {"gpt-x": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}}}


def test_model_call_reserves_clamps_and_settles_to_reported_usage() -> None:
    """model_call clamps max_tokens to the USD left and settles to the reported usage."""
    pol = policy(budgets={"max_usd": 0.0019}, **PRICED)
    with new_run(pol) as run:
        with run.model_call(model="gpt-x", input_tokens=1000, max_tokens=500) as mc:
            # 1000 input tokens cost 0.001; 0.0009 left buys 450 output tokens at $2/Mtok.
            assert mc.max_tokens == 450
            mc.settle(input_tokens=800, output_tokens=100)
        run.finish("done")
    usage = run.result.usage
    assert (usage.steps, usage.input_tokens, usage.output_tokens) == (1, 800, 100)
    assert usage.usd == Decimal("0.001")


def test_model_call_holds_its_reservation_until_settled() -> None:
    """While one model call is reserved, a second that does not fit beside it is refused."""
    pol = policy(budgets={"max_usd": 0.0019}, **PRICED)
    with new_run(pol) as run, run.model_call(model="gpt-x", input_tokens=1000, max_tokens=500):
        run.model_call(model="gpt-x", input_tokens=1000, max_tokens=500)
    assert run.result.stop_reason == "max_usd"
    assert run.result.stop is not None and run.result.stop.observed > Decimal("0.0019")


def test_model_call_left_without_settle_charges_the_worst_case() -> None:
    """Leaving a model_call block without settle() charges the whole reservation."""
    pol = policy(**PRICED)
    with new_run(pol) as run:
        with run.model_call(model="gpt-x", input_tokens=1000, max_tokens=500) as mc:
            assert mc.max_tokens == 500
        run.finish()
    usage = run.result.usage
    assert (usage.input_tokens, usage.output_tokens, usage.usd) == (1000, 500, Decimal("0.002"))


def test_model_call_exception_inside_is_model_error() -> None:
    """An exception inside the model_call block ends the run with model_error:<model>."""
    with new_run(policy(**PRICED)) as run, run.model_call(model="gpt-x", input_tokens=10):
        raise ConnectionError("provider 503")
    assert str(run.result.stop) == "model_error:gpt-x"
    assert run.result.status == "error"
    assert "ConnectionError: provider 503" in (run.result.stop.message if run.result.stop else "")
    assert run.result.usage.steps == 1 and run.result.usage.tokens == 0


def test_model_call_settle_twice_is_a_config_error() -> None:
    """A model call can be settled once."""
    with new_run(policy(**PRICED)) as run, run.model_call(model="gpt-x", input_tokens=10) as mc:
        mc.settle(input_tokens=10, output_tokens=10)
        with pytest.raises(corral.ConfigError, match="already settled"):
            mc.settle(input_tokens=10, output_tokens=10)


def test_model_call_is_a_step() -> None:
    """Each model_call counts a step, so max_steps bounds them."""
    with new_run(policy(budgets={"max_steps": 2}, **PRICED)) as run:
        for _ in range(3):
            with run.model_call(model="gpt-x", input_tokens=10) as mc:
                mc.settle(input_tokens=10, output_tokens=1)
    assert str(run.result.stop) == "max_steps:run (limit 2, would be 3)"


def test_model_call_is_refused_by_the_kill_switch() -> None:
    """A stop_all kill switch refuses a wrapped model call before it starts."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="tenant", target="acme", mode="stop_all"))
    with new_run(policy(**PRICED), store=store, tenant="acme") as run:
        run.model_call(model="gpt-x", input_tokens=10)
    assert str(run.result.stop) == "kill_switch:model"
    assert run.result.usage.steps == 0


def test_model_call_with_a_model_object_uses_its_price() -> None:
    """A model object with its own price is priced by it when the policy lists none."""

    class MyModel:
        name = "my-model"
        price = prices(1, 1)

    with new_run(policy(budgets={"max_usd": 1})) as run:
        with run.model_call(model=MyModel(), input_tokens=1_000_000 // 2) as mc:
            mc.settle(input_tokens=500_000, output_tokens=0)
        run.finish()
    assert run.result.usage.usd == Decimal("0.5")


def test_model_call_of_an_unpriced_model_under_max_usd_is_refused() -> None:
    """A model name with no known price under max_usd is refused with unpriced_model."""
    with new_run(policy(budgets={"max_usd": 1})) as run:
        run.model_call(model="mystery-model", input_tokens=10)
    assert str(run.result.stop) == "max_usd:run (unpriced_model: mystery-model)"
    assert "mystery-model" in (run.result.stop.message if run.result.stop else "")


# -- authorize, then report ---------------------------------------------------------------------


def test_authorize_then_report_gives_the_cleaned_observation() -> None:
    """authorize() passes the gateway; report() validates and cleans what the caller got."""
    with new_run() as run:
        ticket = run.authorize("search.read", {"query": "vendor"})
        assert (ticket.tool, dict(ticket.arguments), ticket.replayed) == (
            "search.read",
            {"query": "vendor"},
            False,
        )
        assert ticket.timeout > 0
        assert run.report(ticket, "<p>vendor is <b>up</b></p>") == "vendor is\nup"
        run.finish()
    assert run.result.usage.tool_calls == 1


def test_authorize_of_a_cached_read_is_replayed() -> None:
    """An identical read authorized again is served from the cache: do not execute it."""
    with new_run() as run:
        first = run.authorize("search.read", {"query": "vendor"})
        run.report(first, "up")
        second = run.authorize("search.read", {"query": "vendor"})
        assert second.replayed and second.output == "up"
        assert run.report(second, "ignored") == "up"
        run.finish()
    assert run.result.usage.tool_calls == 1


def test_report_failure_stops_the_run_with_tool_error() -> None:
    """report_failure() charges the attempt and ends the run with tool_error."""
    with new_run() as run:
        ticket = run.authorize("search.read", {"query": "vendor"})
        run.report_failure(ticket, TimeoutError("vendor slow"), timed_out=True)
    assert str(run.result.stop) == "tool_error:search.read"
    assert run.result.usage.tool_calls == 1


def test_report_twice_is_a_config_error() -> None:
    """A ticket is reported once."""
    with new_run() as run:
        ticket = run.authorize("search.read", {"query": "vendor"})
        run.report(ticket, "up")
        with pytest.raises(corral.ConfigError, match="already reported"):
            run.report(ticket, "up")


def test_authorize_is_refused_for_a_tool_not_allowed() -> None:
    """authorize() applies the allowlist: a tool not allowed stops the run."""
    with new_run(policy(tools={"allow": ["search.read"]})) as run:
        run.authorize("crm.write", {"note": "x"})
    assert str(run.result.stop) == "tool_denied:crm.write"


def test_authorize_asks_the_approver_for_a_write() -> None:
    """authorize() of a write that needs approval asks the approver first."""
    asked: list[str] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        asked.append(request.tool)
        return True

    with new_run(policy(writes={"require_approval": True}), approver=approver) as run:
        ticket = run.authorize("crm.write", {"note": "refund"})
        assert ticket.idempotency_key
        assert run.report(ticket, "sent") == "sent"
        run.finish()
    assert asked == ["crm.write"]


def test_sync_authorize_with_an_async_approver_is_a_config_error() -> None:
    """A sync Run cannot wait for an async approver in authorize(): a clear ConfigError."""

    async def approver(request: corral.ApprovalRequest) -> bool:
        return True

    with (
        pytest.raises(corral.ConfigError, match="async"),
        new_run(policy(writes={"require_approval": True}), approver=approver) as run,
    ):
        run.authorize("crm.write", {"note": "refund"})
