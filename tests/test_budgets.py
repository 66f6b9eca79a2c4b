"""Budgets through the gateway: the charge table, reserve-then-settle, per-tool caps."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.stores.base import KillSwitchState
from corral.testing import ManualClock

P = corral.Policy.from_dict


def allow(*names: str, **sections: object) -> corral.Policy:
    """A policy allowing ``names``, with writes needing no approval unless said otherwise."""
    data: dict[str, object] = {
        "tools": {"allow": list(names)},
        "writes": {"require_approval": False},
    }
    for key, value in sections.items():
        if key == "tools":
            data["tools"] = {"allow": list(names), **value}  # type: ignore[dict-item]
        else:
            data[key] = value
    return P(data)


# -- the charge table --------------------------------------------------------------------


def test_executed_call_charges_one_call_and_its_declared_cost(probe, store):
    """An executed call costs one tool call and the tool's declared USD."""
    search = probe("search.read", cost_usd="0.25")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        assert run.call("search.read", {"q": "x"}) == "ok"
        usage = run.usage
    assert (usage.tool_calls, usage.usd) == (1, Decimal("0.25"))
    assert usage.tool_calls_by_tool == {"search.read": 1}


def test_policy_cost_overrides_the_declared_cost(probe, store):
    """``tools.specs.<name>.cost_usd`` is what a call is charged."""
    search = probe("search.read", cost_usd="0.25")
    policy = allow("search.read", tools={"specs": {"search.read": {"cost_usd": 1.5}}})
    with corral.Run(policy, tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "x"})
    assert run.result.usage.usd == Decimal("1.5")


def test_every_attempt_is_charged_when_a_flaky_read_recovers(probe, store):
    """A read failing twice then succeeding with retries=2 is ok, charged for 3 attempts."""
    flaky = probe("vendor.read", fails=2, cost_usd="0.10", retries=2)
    clock = ManualClock()
    with corral.Run(allow("vendor.read"), tools=[flaky.tool], store=store, clock=clock) as run:
        assert run.call("vendor.read", {"q": "x"}) == "ok"
    assert run.result.status == "ok"
    assert flaky.count == 3
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (3, Decimal("0.30"))


def test_a_raising_call_is_charged_its_cost_by_default(probe, store):
    """A call that raises costs one call and its cost (failed vendor calls are billed)."""
    bad = probe("vendor.read", fails=99, cost_usd="0.40")
    with corral.Run(allow("vendor.read"), tools=[bad.tool], store=store) as run:
        run.call("vendor.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert run.result.stop.retryable
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.40"))


def test_charge_on_error_false_charges_the_call_but_no_usd(probe, store):
    """With ``charge_on_error: false`` a failed call costs one call and $0."""
    bad = probe("vendor.read", fails=99, cost_usd="0.40")
    policy = allow("vendor.read", tools={"specs": {"vendor.read": {"charge_on_error": False}}})
    with corral.Run(policy, tools=[bad.tool], store=store) as run:
        run.call("vendor.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal(0))


def test_a_timed_out_call_is_charged_like_a_raising_one(probe, store):
    """A call that times out costs one call and its declared cost."""
    slow = probe("slow.read", sleep=0.5, cost_usd="0.30", timeout=0.05)
    with corral.Run(allow("slow.read"), tools=[slow.tool], store=store) as run:
        run.call("slow.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert "within" in run.result.stop.message
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.30"))


def test_a_denied_call_is_not_charged(probe, store):
    """A call the allowlist denies leaves usage unchanged."""
    browser = probe("browser.open", cost_usd="1")
    with corral.Run(allow(), tools=[browser.tool], store=store) as run:
        run.call("browser.open", {"q": "x"})
    assert run.result.stop_reason == "tool_denied"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (0, Decimal(0))
    assert browser.count == 0


def test_a_call_with_invalid_arguments_is_not_charged(probe, store):
    """Invalid arguments are refunded: usage unchanged, the tool not run."""
    search = probe("search.read", cost_usd="1")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        with pytest.raises(corral.ToolRejected):
            run.call("search.read", {"q": 3, "extra": True})
        assert (run.usage.tool_calls, run.usage.usd) == (0, Decimal(0))
    assert search.count == 0


def test_a_call_refused_by_a_budget_is_not_charged(probe, store):
    """A call that does not fit leaves usage as it was before it."""
    search = probe("search.read", cost_usd="0.70")
    policy = allow("search.read", budgets={"max_usd": 1})
    with corral.Run(policy, tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "a"})
        run.call("search.read", {"q": "b"})
    assert run.result.stop_reason == "max_usd"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.70"))
    assert search.calls == ["a"]


def test_a_read_served_from_the_cache_is_free(probe, store):
    """An identical read within its TTL costs nothing and does not run the tool."""
    search = probe("search.read", cost_usd="0.50")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "x"})
        run.call("search.read", {"q": "x"})
    assert search.count == 1
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.50"))


def test_an_idempotent_replay_is_free(probe, store):
    """A write replayed from its idempotency record costs nothing."""
    pay = probe("pay.send", effect="write", cost_usd="2")
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as run:
        run.call("pay.send", {"q": "x"}, idempotency_key="order-1")
        run.call("pay.send", {"q": "x"}, idempotency_key="order-1")
    assert pay.count == 1
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("2"))


def test_a_tool_saying_not_executed_costs_a_call_but_no_usd(store):
    """``NotExecuted`` is charged one call (the attempt) and no USD, and the run goes on."""

    @corral.tool(name="pay.send", effect="write", cost_usd="2")
    def pay(q: str) -> str:
        raise corral.NotExecuted("card declined before charging")

    with corral.Run(allow("pay.send"), tools=[pay], store=store) as run:
        with pytest.raises(corral.ToolRejected) as caught:
            run.call("pay.send", {"q": "x"})
        assert caught.value.reason == "tool_error"
        assert (run.usage.tool_calls, run.usage.usd) == (1, Decimal(0))


def test_calls_saying_not_executed_cannot_loop_forever(store):
    """Repeated ``NotExecuted`` answers run into the tool-call budget."""

    @corral.tool(name="pay.send", effect="write")
    def pay(q: str) -> str:
        raise corral.NotExecuted("declined")

    policy = allow("pay.send", budgets={"max_tool_calls": 3})
    with corral.Run(policy, tools=[pay], store=store) as run:
        for i in range(10):
            try:
                run.call("pay.send", {"q": f"x{i}"})  # distinct, so loop detection stays out
            except corral.ToolRejected:
                continue
    assert run.result.stop_reason == "max_tool_calls"
    assert run.result.usage.tool_calls == 3


# -- reserve, then settle ----------------------------------------------------------------


def test_max_usd_stop_names_the_limit_and_what_usage_would_be(probe, store):
    """The refusal reads ``max_usd:run (limit 1.00, would be 1.40)``."""
    search = probe("search.read", cost_usd="0.70")
    policy = allow("search.read", budgets={"max_usd": 1.00})
    with corral.Run(policy, tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "a"})
        run.call("search.read", {"q": "b"})
    assert str(run.result.stop) == "max_usd:run (limit 1.00, would be 1.40)"
    assert run.result.stop.scope == "run"
    assert not run.result.stop.retryable


def test_a_call_that_does_not_fit_is_never_started(probe, store):
    """A tool whose cost exceeds what is left is not called at all."""
    pricey = probe("pricey.read", cost_usd="5")
    policy = allow("pricey.read", budgets={"max_usd": 4})
    with corral.Run(policy, tools=[pricey.tool], store=store) as run:
        run.call("pricey.read", {"q": "x"})
    assert run.result.stop_reason == "max_usd"
    assert pricey.count == 0
    assert run.result.usage.usd == 0


def test_a_write_that_does_not_fit_is_refused_before_approval_is_asked(probe, store):
    """The fit check comes before approval: no human is asked for a call that cannot run."""
    pay = probe("pay.send", effect="write", cost_usd="5")
    asked = []
    policy = P({"tools": {"allow": ["pay.send"]}, "budgets": {"max_usd": 1}})
    with corral.Run(policy, tools=[pay.tool], store=store, approver=asked.append) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "max_usd"
    assert asked == []
    assert pay.count == 0


def test_max_tool_calls_stops_before_the_call_that_would_pass_it(probe, store):
    """With ``max_tool_calls: 2`` the third call is refused and not run."""
    search = probe("search.read")
    policy = allow("search.read", budgets={"max_tool_calls": 2})
    with corral.Run(policy, tools=[search.tool], store=store) as run:
        for q in "abc":
            run.call("search.read", {"q": q})
    assert str(run.result.stop) == "max_tool_calls:run (limit 2, would be 3)"
    assert search.calls == ["a", "b"]


def test_max_tool_calls_counts_retries(probe, store):
    """Retries consume the tool-call budget: the attempt that would pass it is not made."""
    flaky = probe("vendor.read", fails=5, retries=5)
    policy = allow("vendor.read", budgets={"max_tool_calls": 3})
    clock = ManualClock()
    with corral.Run(policy, tools=[flaky.tool], store=store, clock=clock) as run:
        run.call("vendor.read", {"q": "x"})
    assert run.result.stop_reason == "max_tool_calls"
    assert flaky.count == 3
    assert run.result.usage.tool_calls == 3


def test_a_per_tool_cap_stops_with_the_tool_scope(probe, store):
    """``tools.specs.<name>.max_calls`` stops with ``max_tool_calls:tool/<name>``."""
    browser = probe("browser.open")
    search = probe("search.read")
    policy = allow(
        "browser.open",
        "search.read",
        tools={"specs": {"browser.open": {"max_calls": 2, "cache": False}}},
    )
    with corral.Run(policy, tools=[browser.tool, search.tool], store=store) as run:
        run.call("browser.open", {"q": "1"})
        run.call("search.read", {"q": "1"})
        run.call("browser.open", {"q": "2"})
        run.call("browser.open", {"q": "3"})
    assert str(run.result.stop) == "max_tool_calls:tool/browser.open (limit 2, would be 3)"
    assert run.result.stop.tool == "browser.open"
    assert browser.count == 2
    assert run.result.usage.tool_calls_by_tool == {"browser.open": 2, "search.read": 1}


def test_a_per_tool_cap_counts_retries(probe, store):
    """A tool's own cap is charged per attempt, retries included."""
    flaky = probe("vendor.read", fails=9, retries=9)
    policy = allow("vendor.read", tools={"specs": {"vendor.read": {"max_calls": 2}}})
    with corral.Run(policy, tools=[flaky.tool], store=store, clock=ManualClock()) as run:
        run.call("vendor.read", {"q": "x"})
    assert str(run.result.stop) == "max_tool_calls:tool/vendor.read (limit 2, would be 3)"
    assert flaky.count == 2


def test_max_steps_stops_the_step_past_the_limit(store):
    """``max_steps: 2``: two steps pass, the third raises ``max_steps``."""
    with corral.Run(allow(budgets={"max_steps": 2}), store=store) as run:
        run.step()
        run.step()
        with pytest.raises(corral.Stop) as caught:
            run.step()
    assert str(caught.value) == "max_steps:run (limit 2, would be 3)"
    assert run.result.usage.steps == 2


def test_default_budgets_bound_a_run_that_names_none(probe, store):
    """An empty budgets section still stops at 15 tool calls."""
    search = probe("search.read")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        for i in range(100):
            run.call("search.read", {"q": str(i)})
    assert run.result.stop_reason == "max_tool_calls"
    assert search.count == 15


def test_a_stop_is_sticky_even_when_the_caller_catches_it(probe, store):
    """After a budget stop, every later call raises it again and nothing more runs."""
    search = probe("search.read", cost_usd="0.6")
    cheap = probe("cheap.read")
    policy = allow("search.read", "cheap.read", budgets={"max_usd": 1})
    with corral.Run(policy, tools=[search.tool, cheap.tool], store=store) as run:
        run.call("search.read", {"q": "a"})
        with pytest.raises(corral.Stop):
            run.call("search.read", {"q": "b"})
        with pytest.raises(corral.Stop) as again:
            run.call("cheap.read", {"q": "c"})
    assert again.value.reason == "max_usd"
    assert cheap.count == 0
    assert run.result.stop_reason == "max_usd"


def test_a_resumed_run_keeps_its_usage(probe, store):
    """Resuming by id carries usage over, so the budget is not reset by a restart."""
    search = probe("search.read", cost_usd="0.6")
    policy = allow("search.read", budgets={"max_usd": 1})
    with corral.Run(policy, tools=[search.tool], store=store) as first:
        first.call("search.read", {"q": "a"})
    with corral.Run(policy, tools=[search.tool], store=store, run_id=first.id) as again:
        assert again.usage.usd == Decimal("0.6")
        again.call("search.read", {"q": "b"})
    assert again.result.stop_reason == "max_usd"
    assert search.calls == ["a"]


def test_waiting_for_approval_is_not_charged_to_max_seconds(probe, store):
    """An approval that takes longer than ``max_seconds`` does not stop the run."""
    clock = ManualClock()
    pay = probe("pay.send", effect="write")

    def slow_human(request: corral.ApprovalRequest) -> bool:
        clock.advance(120)
        return True

    policy = P({"tools": {"allow": ["pay.send"]}, "budgets": {"max_seconds": 10}})
    with corral.Run(policy, tools=[pay.tool], store=store, clock=clock, approver=slow_human) as run:
        assert run.call("pay.send", {"q": "x"}) == "ok"
        clock.advance(5)
        run.step()
    assert run.result.status == "ok"
    assert run.result.usage.waiting_seconds == pytest.approx(120)
    assert run.result.usage.active_seconds == pytest.approx(5)


def test_active_time_still_runs_out_after_an_approval(probe, store):
    """Waiting is excluded, but the active seconds on either side still add up."""
    clock = ManualClock()
    pay = probe("pay.send", effect="write")

    def human(request: corral.ApprovalRequest) -> bool:
        clock.advance(60)
        return True

    policy = P({"tools": {"allow": ["pay.send"]}, "budgets": {"max_seconds": 10}})
    with corral.Run(policy, tools=[pay.tool], store=store, clock=clock, approver=human) as run:
        clock.advance(6)
        run.call("pay.send", {"q": "x"})
        clock.advance(6)
        run.step()
    assert run.result.stop_reason == "max_seconds"
    assert run.result.usage.waiting_seconds == pytest.approx(60)


def test_a_killed_call_is_not_charged(probe, store):
    """A call refused by the kill switch leaves usage unchanged."""
    pay = probe("pay.send", effect="write", cost_usd="3")
    store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "kill_switch"
    assert (run.result.usage.tool_calls, run.result.usage.usd, pay.count) == (0, 0, 0)


def test_threads_sharing_one_run_never_pass_its_caps(store):
    """Sixteen threads calling one ``Run`` at once: calls and spend stop exactly at the caps."""
    ran = []
    lock = threading.Lock()

    @corral.tool(name="llm.read", effect="read", cost_usd="0.25")
    def llm(q: str) -> str:
        with lock:
            ran.append(q)
        time.sleep(0.001)
        return q

    policy = allow("llm.read", budgets={"max_usd": 2.00, "max_tool_calls": 50})
    with corral.Run(policy, tools=[llm], store=store) as run:
        barrier = threading.Barrier(16)

        def worker(n: int) -> None:
            barrier.wait()
            for i in range(10):
                try:
                    run.call("llm.read", {"q": f"{n}-{i}"})
                except corral.Stop:
                    return

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(ran) == 8
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (8, Decimal("2.00"))
    assert run.result.stop_reason == "max_usd"


# -- figures no action can have used are never a credit ---------------------------------------
_bad_counts = st.sampled_from([-1, -(10**9), 1.5, float("nan"), True, "3", None])
_bad_usd = st.sampled_from(
    [Decimal("-0.01"), Decimal("-1E+9"), Decimal("NaN"), Decimal("-Infinity"), -1, 0.5, None]
)
_count = st.one_of(st.integers(0, 50), _bad_counts)
_usd = st.one_of(st.integers(0, 500).map(lambda c: Decimal(c) / 100), _bad_usd)


@settings(max_examples=200, deadline=None)
@given(
    held=st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 99), st.integers(0, 99)),
    actual=st.tuples(_count, _count, _count, _count, _usd),
    commit=st.booleans(),
)
def test_a_settlement_never_lowers_committed_usage(
    held: tuple[int, int, int, int], actual: tuple[Any, ...], commit: bool
) -> None:
    """Meter.settle and Meter.commit replace a negative, non-finite or ill-typed figure by the
    hold's own (0 for a commit): committed usage never goes below what it was."""
    from corral.budgets.meter import Charge, Limits, Meter

    meter = Meter(Limits(max_steps=100, max_tool_calls=100))
    steps, calls, tin, tout = held
    before = meter.usage()
    hold_charge = Charge(steps=steps, tool_calls=calls, input_tokens=tin, output_tokens=tout,
                         usd=Decimal(tin) / 100)  # fmt: skip
    a_steps, a_calls, a_in, a_out, a_usd = actual
    reported = Charge(steps=a_steps, tool_calls=a_calls, input_tokens=a_in, output_tokens=a_out,
                      usd=a_usd)  # fmt: skip
    if commit:
        meter.commit(reported)
        floor = Charge()
    else:
        recorded = meter.settle(meter.reserve(hold_charge), reported)
        floor = hold_charge
        for name in ("steps", "tool_calls", "input_tokens", "output_tokens", "usd"):
            value = getattr(recorded, name)
            assert type(value) in (int, Decimal) and value >= 0, name
    after = meter.usage()
    for name, got in (
        ("steps", a_steps),
        ("tool_calls", a_calls),
        ("input_tokens", a_in),
        ("output_tokens", a_out),
        ("usd", a_usd),
    ):
        good = type(got) in ((Decimal,) if name == "usd" else (int,)) and got == got and got >= 0
        expected = getattr(before, name) + (got if good else getattr(floor, name))
        assert getattr(after, name) == expected, name
    assert after.usd.is_finite()


def test_a_tool_cost_that_cannot_be_right_is_refused_in_code_and_in_the_policy() -> None:
    """A negative, non-finite or non-numeric cost_usd is refused where it is declared: in
    @corral.tool, in a Tool built directly, and in the policy's tool specs."""
    from dataclasses import replace

    def fn(q: str) -> str:
        return q

    for bad in (-1, "-0.01", "nan", "inf", "-inf", "lots", True, None, [1]):
        with pytest.raises(corral.ToolDefinitionError, match="cost_usd"):
            corral.tool(fn, name="x.read", effect="read", cost_usd=bad)
    ok = corral.tool(fn, name="x.read", effect="read", cost_usd=0.1)
    assert ok.cost_usd == Decimal("0.1")
    for bad in (Decimal(-1), Decimal("NaN"), 0.1, 1):
        with pytest.raises(corral.ToolDefinitionError, match="cost_usd"):
            replace(ok, cost_usd=bad)
    for bad in (-1, "nan", "inf", True):
        with pytest.raises(corral.PolicyError, match="cost_usd"):
            P({"tools": {"allow": ["x.read"], "specs": {"x.read": {"cost_usd": bad}}}})
