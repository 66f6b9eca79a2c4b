"""The tool gateway from synchronous code: timeouts, retries, cache, kill switch, fail closed,
approvals, idempotency, and the authorize / report split."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest

import corral
from corral.stores.base import KillSwitchState
from corral.testing import ManualClock, MemoryStore

P = corral.Policy.from_dict


def allow(*names: str, approval: bool = False, **sections: Any) -> corral.Policy:
    """A policy allowing ``names``; writes need approval only when ``approval`` is true."""
    tools = {"allow": list(names), **sections.pop("tools", {})}
    return P({"tools": tools, "writes": {"require_approval": approval}, **sections})


# -- time ---------------------------------------------------------------------------------


def test_a_hung_tool_on_the_main_thread_is_interrupted_at_the_run_deadline(store):
    """``max_seconds: 0.5`` with a tool sleeping 5 s stops within ~0.5 s + 100 ms."""
    seen: dict[str, Any] = {}

    @corral.tool(name="slow.read", effect="read")
    def slow(q: str) -> str:
        seen["main"] = threading.current_thread() is threading.main_thread()
        time.sleep(5)
        seen["finished"] = True
        return "late"

    # The run's clock starts while it is made (a first run in the process also imports what
    # it uses): the stop comes no sooner than 0.5 s after the run is asked for, and no later
    # than 0.6 s after it is made.
    asked = time.monotonic()
    with corral.Run(
        allow("slow.read", budgets={"max_seconds": 0.5}), tools=[slow], store=store
    ) as run:
        made = time.monotonic()
        try:
            run.call("slow.read", {"q": "x"})
        finally:  # the run's own ending (its last writes to the store) is not the deadline's
            stopped = time.monotonic()
    assert run.result.stop_reason == "max_seconds"
    assert stopped - asked >= 0.45
    assert stopped - made <= 0.6
    assert seen == {"main": True}  # interrupted in place, never finished


def test_a_tool_that_swallows_exceptions_is_still_interrupted(store):
    """A broad ``except Exception`` in the tool does not stop the deadline."""
    caught = []

    @corral.tool(name="stubborn.read", effect="read")
    def stubborn(q: str) -> str:
        try:
            time.sleep(5)
        except Exception as exc:
            caught.append(exc)
        return "late"

    started = time.monotonic()
    policy = allow("stubborn.read", budgets={"max_seconds": 0.3})
    with corral.Run(policy, tools=[stubborn], store=store) as run:
        run.call("stubborn.read", {"q": "x"})
    assert run.result.stop_reason == "max_seconds"
    assert time.monotonic() - started <= 0.4
    assert caught == []


def test_a_hung_tool_called_from_a_worker_thread_is_abandoned_at_the_run_deadline(store):
    """Off the main thread the tool is abandoned at the deadline; the run still stops in time."""
    release = threading.Event()
    outcome: dict[str, Any] = {}

    @corral.tool(name="slow.read", effect="read")
    def slow(q: str) -> str:
        release.wait(5)
        return "late"

    def agent() -> None:
        started = time.monotonic()
        policy = allow("slow.read", budgets={"max_seconds": 0.5})
        with corral.Run(policy, tools=[slow], store=store) as run:
            run.call("slow.read", {"q": "x"})
        outcome["elapsed"] = time.monotonic() - started
        outcome["result"] = run.result

    worker = threading.Thread(target=agent)
    worker.start()
    worker.join(3)
    release.set()
    assert outcome["result"].stop_reason == "max_seconds"
    assert 0.45 <= outcome["elapsed"] <= 0.6
    assert outcome["result"].usage.tool_calls == 1


def test_the_tool_sees_a_deadline_clamped_to_the_time_the_run_has_left(store):
    """``ctx.remaining()`` is at most what the run has left, not the tool's own timeout."""
    seen = []

    @corral.tool(name="clock.read", effect="read", timeout=60)
    def clock_read(q: str, ctx: corral.ToolContext) -> str:
        seen.append(ctx.remaining())
        return "ok"

    clock = ManualClock()
    policy = allow("clock.read", budgets={"max_seconds": 10})
    with corral.Run(policy, tools=[clock_read], store=store, clock=clock) as run:
        clock.advance(7)
        run.call("clock.read", {"q": "x"})
    assert seen == [pytest.approx(3)]


def test_a_tool_timeout_shorter_than_the_run_ends_in_tool_error_after_its_retries(probe, store):
    """Each attempt times out at the tool's timeout; after ``retries`` more it is ``tool_error``."""
    slow = probe("slow.read", sleep=0.3, timeout=0.05, retries=1)
    started = time.monotonic()
    with corral.Run(allow("slow.read"), tools=[slow.tool], store=store) as run:
        run.call("slow.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert run.result.stop.extra["attempts"] == 2
    assert run.result.usage.tool_calls == 2
    assert time.monotonic() - started < 0.35


def test_a_policy_timeout_overrides_the_tools_own(probe, store):
    """``tools.specs.<name>.timeout_seconds`` bounds each attempt."""
    slow = probe("slow.read", sleep=0.3, timeout=10)
    policy = allow("slow.read", tools={"specs": {"slow.read": {"timeout_seconds": 0.05}}})
    started = time.monotonic()
    with corral.Run(policy, tools=[slow.tool], store=store) as run:
        run.call("slow.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert time.monotonic() - started < 0.25


def test_a_run_out_of_time_starts_no_tool(probe, store):
    """Once the run's seconds are used, the next call stops before the tool runs."""
    clock = ManualClock()
    search = probe("search.read")
    policy = allow("search.read", budgets={"max_seconds": 5})
    with corral.Run(policy, tools=[search.tool], store=store, clock=clock) as run:
        clock.advance(5)
        run.call("search.read", {"q": "x"})
    assert run.result.stop_reason == "max_seconds"
    assert search.count == 0
    assert run.result.usage.tool_calls == 0


# -- retries ------------------------------------------------------------------------------


def test_a_read_is_retried_at_most_its_retries(probe, store):
    """A failing read with ``retries: 2`` runs three times, then stops with ``tool_error``."""
    bad = probe("vendor.read", fails=99, retries=2)
    with corral.Run(
        allow("vendor.read"), tools=[bad.tool], store=store, clock=ManualClock()
    ) as run:
        run.call("vendor.read", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert bad.count == 3
    assert "ConnectionError: vendor down" in run.result.stop.message


def test_a_write_is_not_retried_unless_idempotent(probe, store):
    """A failing write with ``retries: 3`` runs once: writes are retried only when idempotent."""
    pay = probe("pay.send", effect="write", fails=99, retries=3)
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store, clock=ManualClock()) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "tool_error"
    assert pay.count == 1


def test_an_idempotent_write_is_retried(probe, store):
    """A write declared idempotent is retried like a read."""
    put = probe("kv.put", effect="write", fails=1, retries=1, idempotent=True)
    with corral.Run(allow("kv.put"), tools=[put.tool], store=store, clock=ManualClock()) as run:
        assert run.call("kv.put", {"q": "x"}) == "ok"
    assert put.count == 2
    assert run.result.usage.tool_calls == 2


def test_policy_retries_override_the_tools_own(probe, store):
    """``tools.specs.<name>.retries`` decides how often a read is retried."""
    bad = probe("vendor.read", fails=99, retries=5)
    policy = allow("vendor.read", tools={"specs": {"vendor.read": {"retries": 0}}})
    with corral.Run(policy, tools=[bad.tool], store=store) as run:
        run.call("vendor.read", {"q": "x"})
    assert bad.count == 1


# -- read cache ---------------------------------------------------------------------------


def test_an_identical_read_within_the_ttl_is_served_from_the_cache(probe, store):
    """The second identical read is not executed; the same observation comes back."""
    search = probe("search.read", returns=lambda q: f"results for {q}")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        first = run.call("search.read", {"q": "x"})
        second = run.call("search.read", '{"q": "x"}')  # same arguments, as raw JSON
    assert first == second == "results for x"
    assert search.count == 1


def test_a_cached_read_expires_after_its_ttl(probe, store):
    """Past ``cache_ttl_seconds`` the read runs again."""
    clock = ManualClock()
    search = probe("search.read")
    policy = allow(
        "search.read",
        tools={"specs": {"search.read": {"cache_ttl_seconds": 10}}},
        loops={"repeats": 5, "window": 5},  # three identical reads are the point here
    )
    with corral.Run(policy, tools=[search.tool], store=store, clock=clock) as run:
        run.call("search.read", {"q": "x"})
        clock.advance(9)
        run.call("search.read", {"q": "x"})
        clock.advance(2)
        run.call("search.read", {"q": "x"})
    assert search.count == 2


def test_a_write_clears_the_read_cache(probe, store):
    """After any write, reads run again."""
    search = probe("search.read")
    put = probe("kv.put", effect="write")
    with corral.Run(
        allow("search.read", "kv.put"), tools=[search.tool, put.tool], store=store
    ) as run:
        run.call("search.read", {"q": "x"})
        run.call("kv.put", {"q": "y"})
        run.call("search.read", {"q": "x"})
    assert search.count == 2


def test_a_failed_write_also_clears_the_read_cache(probe, store):
    """A write that raised may have changed things: cached reads are dropped anyway."""
    search = probe("search.read")
    put = probe("kv.put", effect="write", fails=1, retries=1, idempotent=True)
    policy = allow("search.read", "kv.put")
    clock = ManualClock()
    with corral.Run(policy, tools=[search.tool, put.tool], store=store, clock=clock) as run:
        run.call("search.read", {"q": "x"})
        run.call("kv.put", {"q": "y"})
        run.call("search.read", {"q": "x"})
    assert search.count == 2


def test_a_failed_read_is_not_cached(probe, store):
    """An error is never served from the cache: the retry runs the tool again."""
    flaky = probe("vendor.read", fails=1, retries=1)
    with corral.Run(
        allow("vendor.read"), tools=[flaky.tool], store=store, clock=ManualClock()
    ) as run:
        assert run.call("vendor.read", {"q": "x"}) == "ok"
    assert flaky.count == 2


def test_cache_false_opts_a_tool_out(probe, store):
    """With ``cache: false`` every identical read runs and is charged."""
    search = probe("search.read", cost_usd="0.1")
    policy = allow("search.read", tools={"specs": {"search.read": {"cache": False}}})
    with corral.Run(policy, tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "x"})
        run.call("search.read", {"q": "x"})
    assert search.count == 2
    assert run.result.usage.usd == Decimal("0.2")


def test_different_arguments_are_not_served_from_the_cache(probe, store):
    """The cache is keyed by the exact canonical arguments."""
    search = probe("search.read")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "x"})
        run.call("search.read", {"q": "X"})
    assert search.calls == ["x", "X"]


# -- kill switch --------------------------------------------------------------------------


@pytest.fixture
def tools(probe):
    """A read and a write, both allowed."""
    return {"read": probe("kb.read"), "write": probe("kb.write", effect="write")}


def _run_both(store: MemoryStore, tools: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    outcomes = {}
    for kind, name in (("read", "kb.read"), ("write", "kb.write")):
        with corral.Run(
            allow("kb.read", "kb.write"),
            tools=[t.tool for t in tools.values()],
            store=store,
            **kwargs,
        ) as run:
            run.call(name, {"q": "x"})
        outcomes[kind] = run.result.stop_reason
    return outcomes


def test_disable_writes_blocks_writes_but_not_reads(store, tools):
    """``disable_writes``: reads run, writes stop with ``kill_switch``."""
    store.set_kill_switch(KillSwitchState(scope="global", mode="disable_writes"))
    assert _run_both(store, tools) == {"read": "ok", "write": "kill_switch"}
    assert (tools["read"].count, tools["write"].count) == (1, 0)


def test_stop_all_blocks_every_call(store, tools):
    """``stop_all``: nothing runs."""
    store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
    assert _run_both(store, tools) == {"read": "kill_switch", "write": "kill_switch"}
    assert (tools["read"].count, tools["write"].count) == (0, 0)


def test_a_switch_without_a_mode_uses_the_policys_mode_when_enabled(store, tools):
    """A global switch with no mode means ``kill_switch.mode_when_enabled`` (disable_writes)."""
    store.set_kill_switch(KillSwitchState(scope="global"))
    assert _run_both(store, tools) == {"read": "ok", "write": "kill_switch"}


def test_a_tool_scoped_switch_blocks_only_that_tool(store, tools):
    """A ``stop_all`` switch on ``tool/kb.read`` blocks that read and nothing else."""
    store.set_kill_switch(KillSwitchState(scope="tool", target="kb.read", mode="stop_all"))
    assert _run_both(store, tools) == {"read": "kill_switch", "write": "ok"}


def test_a_tenant_scoped_switch_blocks_only_that_tenant(store, tools):
    """A switch on one tenant leaves another tenant's runs alone."""
    store.set_kill_switch(KillSwitchState(scope="tenant", target="acme", mode="stop_all"))
    assert _run_both(store, tools, tenant="acme")["read"] == "kill_switch"
    assert _run_both(store, tools, tenant="globex") == {"read": "ok", "write": "ok"}


def test_a_switch_set_mid_run_applies_to_the_next_call(store, tools):
    """The switch is checked before every call, not only at the start."""
    policy = allow("kb.read", "kb.write")
    with corral.Run(policy, tools=[t.tool for t in tools.values()], store=store) as run:
        run.call("kb.read", {"q": "a"})
        store.set_kill_switch(KillSwitchState(scope="run", target=run.id, mode="stop_all"))
        run.call("kb.read", {"q": "b"})
    assert run.result.stop_reason == "kill_switch"
    assert tools["read"].calls == ["a"]


def test_disable_expensive_blocks_tools_marked_or_priced_expensive(probe, store):
    """``disable_expensive`` blocks tools marked expensive or costing at least the threshold."""
    marked = probe("browser.open", expensive=True)
    priced = probe("llm.read", cost_usd="2")
    cheap = probe("kb.read", cost_usd="0.01")
    policy = allow("browser.open", "llm.read", "kb.read", kill_switch={"expensive_cost_usd": 1})
    store.set_kill_switch(KillSwitchState(scope="global", mode="disable_expensive"))
    outcomes = {}
    for p in (marked, priced, cheap):
        with corral.Run(policy, tools=[marked.tool, priced.tool, cheap.tool], store=store) as run:
            run.call(p.tool.name, {"q": "x"})
        outcomes[p.tool.name] = run.result.stop_reason
    assert outcomes == {"browser.open": "kill_switch", "llm.read": "kill_switch", "kb.read": "ok"}
    assert (marked.count, priced.count, cheap.count) == (0, 0, 1)


def test_tool_specs_leave_out_kill_switched_tools(store, tools):
    """The tools on offer do not include a tool the switch blocks."""
    store.set_kill_switch(KillSwitchState(scope="global", mode="disable_writes"))
    policy = allow("kb.read", "kb.write")
    with corral.Run(policy, tools=[t.tool for t in tools.values()], store=store) as run:
        names = [spec["name"] for spec in run.tool_specs("neutral")]
    assert names == ["kb.read"]


def test_a_switch_set_while_approval_is_pending_cancels_the_call(probe, store):
    """A kill switch that covers a call waiting for approval stops it before it runs."""
    pay = probe("pay.send", effect="write")

    def approve_while_someone_pulls_the_switch(request: corral.ApprovalRequest) -> bool:
        store.set_kill_switch(KillSwitchState(scope="global", mode="disable_writes"))
        return True

    policy = allow("pay.send", approval=True)
    approver = approve_while_someone_pulls_the_switch
    with corral.Run(policy, tools=[pay.tool], store=store, approver=approver) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "kill_switch"
    assert pay.count == 0
    assert run.result.usage.tool_calls == 0


# -- fail closed --------------------------------------------------------------------------


def test_a_store_that_fails_at_construction_refuses_every_call(probe):
    """A store that cannot be read at start: ``control_plane_unavailable``, nothing runs."""
    search = probe("search.read")
    broken = MemoryStore()
    broken.fail = True
    with corral.Run(allow("search.read"), tools=[search.tool], store=broken) as run:
        run.call("search.read", {"q": "x"})
    assert run.result.stop_reason == "control_plane_unavailable"
    assert search.count == 0


def test_a_store_that_fails_mid_run_refuses_the_next_call(probe, store):
    """The kill switch cannot be read: the call is refused, never executed."""
    search = probe("search.read")
    with corral.Run(allow("search.read"), tools=[search.tool], store=store) as run:
        run.call("search.read", {"q": "a"})
        store.fail = True
        run.call("search.read", {"q": "b"})
    assert run.result.stop_reason == "control_plane_unavailable"
    assert run.result.stop.retryable
    assert search.calls == ["a"]


def test_a_store_failing_only_for_writes_claims_refuses_the_write(probe, store):
    """An idempotency claim that cannot be made stops the write before it runs, refunded."""
    pay = probe("pay.send", effect="write", cost_usd="1")

    class ClaimsDown(MemoryStore):
        def claim(self, *args: Any, **kwargs: Any) -> Any:
            raise corral.StoreError("claims table locked")

    with corral.Run(allow("pay.send"), tools=[pay.tool], store=ClaimsDown()) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "control_plane_unavailable"
    assert pay.count == 0
    assert run.result.usage.tool_calls == 0


# -- approvals ----------------------------------------------------------------------------


def test_an_approved_write_runs_once_with_the_exact_arguments(probe, store):
    """The approver sees the tool and the exact arguments; approved, the write runs."""
    pay = probe("pay.send", effect="write")
    requests: list[corral.ApprovalRequest] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        requests.append(request)
        return True

    with corral.Run(
        allow("pay.send", approval=True), tools=[pay.tool], store=store, approver=approver
    ) as run:
        assert run.call("pay.send", {"q": "refund 40"}) == "ok"
    assert pay.calls == ["refund 40"]
    [request] = requests
    assert (request.tool, dict(request.arguments), request.run_id) == (
        "pay.send",
        {"q": "refund 40"},
        run.id,
    )


def test_a_denied_write_stops_with_approval_denied_and_costs_nothing(probe, store):
    """A denial stops the run (``approval_denied``) with the approver's reason; nothing runs."""
    pay = probe("pay.send", effect="write", cost_usd="5")

    def approver(request: corral.ApprovalRequest) -> corral.ApprovalDecision:
        return corral.ApprovalDecision(approved=False, approver="oncall", reason="too large")

    with corral.Run(
        allow("pay.send", approval=True), tools=[pay.tool], store=store, approver=approver
    ) as run:
        run.call("pay.send", {"q": "x"})
    assert str(run.result.stop) == "approval_denied:pay.send"
    assert "too large" in run.result.stop.message
    assert pay.count == 0
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (0, 0)


def test_a_denial_can_be_handed_back_to_the_model(probe, store):
    """With ``writes.on_denied: tell_model`` the denial is a ``ToolRejected``; the run goes on."""
    pay = probe("pay.send", effect="write")
    search = probe("search.read")
    policy = P(
        {"tools": {"allow": ["pay.send", "search.read"]}, "writes": {"on_denied": "tell_model"}}
    )
    with corral.Run(
        policy, tools=[pay.tool, search.tool], store=store, approver=lambda request: False
    ) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("pay.send", {"q": "x"})
        assert rejected.value.reason == "approval_denied"
        run.call("search.read", {"q": "x"})
    assert run.result.status == "ok"
    assert pay.count == 0


def test_a_write_needing_approval_without_an_approver_is_a_config_error(probe, store):
    """No approval channel for a write that needs one: ``ConfigError`` at construction."""
    pay = probe("pay.send", effect="write")
    with pytest.raises(corral.ConfigError, match=r"pay\.send"):
        corral.Run(allow("pay.send", approval=True), tools=[pay.tool], store=store)


def test_a_tool_of_unknown_effect_needs_approval_like_a_write(store):
    """A plain function (effect unknown) is treated as a write: approval required."""

    def notify(q: str) -> str:
        return "sent"

    with pytest.raises(corral.ConfigError, match="notify"):
        corral.Run(allow("notify", approval=True), tools=[notify], store=store)


def test_reads_need_no_approval(probe, store):
    """``writes.require_approval`` does not apply to reads."""
    search = probe("search.read")
    with corral.Run(allow("search.read", approval=True), tools=[search.tool], store=store) as run:
        assert run.call("search.read", {"q": "x"}) == "ok"


def test_an_approval_slower_than_its_timeout_is_approval_timeout(probe, store):
    """A decision that arrives after ``approval_timeout_seconds`` does not count."""
    clock = ManualClock()
    pay = probe("pay.send", effect="write")

    def late(request: corral.ApprovalRequest) -> bool:
        clock.advance(request.timeout + 1)
        return True

    policy = P({"tools": {"allow": ["pay.send"]}, "writes": {"approval_timeout_seconds": 60}})
    with corral.Run(policy, tools=[pay.tool], store=store, clock=clock, approver=late) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "approval_timeout"
    assert pay.count == 0


def test_an_approval_channel_that_fails_refuses_the_call(probe, store):
    """An approver that raises is a channel that cannot be read: ``control_plane_unavailable``."""
    pay = probe("pay.send", effect="write")

    def broken(request: corral.ApprovalRequest) -> bool:
        raise ConnectionError("approvals service down")

    policy = allow("pay.send", approval=True)
    with corral.Run(policy, tools=[pay.tool], store=store, approver=broken) as run:
        run.call("pay.send", {"q": "x"})
    assert str(run.result.stop) == "control_plane_unavailable:approvals"
    assert run.result.stop.retryable
    assert pay.count == 0


def test_an_approval_channel_that_fails_during_authorize_refuses_the_ticket(probe, store):
    """authorize fails closed the same way when the approver raises."""
    pay = probe("pay.send", effect="write")

    def broken(request: corral.ApprovalRequest) -> bool:
        raise ConnectionError("approvals service down")

    policy = allow("pay.send", approval=True)
    with corral.Run(policy, tools=[pay.tool], store=store, approver=broken) as run:
        run.authorize("pay.send", {"q": "x"})
    assert run.result.stop_reason == "control_plane_unavailable"


@pytest.mark.parametrize("answer", [None, "no", "yes", 1, [True], "approved"])
def test_only_an_explicit_yes_approves(probe, store, answer):
    """Anything but ``True`` or an approving ``ApprovalDecision`` is a denial (fail closed)."""
    pay = probe("pay.send", effect="write")
    policy = allow("pay.send", approval=True)
    with corral.Run(policy, tools=[pay.tool], store=store, approver=lambda request: answer) as run:
        run.call("pay.send", {"q": "x"})
    assert run.result.stop_reason == "approval_denied"
    assert repr(answer) in run.result.stop.message
    assert pay.count == 0


# -- idempotency --------------------------------------------------------------------------


def test_a_write_is_not_executed_again_in_a_resumed_run(probe, store):
    """Resuming a run by id and repeating its write replays the stored outcome."""
    pay = probe("pay.send", effect="write", returns=lambda q: f"paid {q}")
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as first:
        assert first.call("pay.send", {"q": "40"}) == "paid 40"
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store, run_id=first.id) as again:
        assert again.call("pay.send", {"q": "40"}) == "paid 40"
    assert pay.count == 1


def test_a_caller_key_reused_with_other_arguments_is_rejected(probe, store):
    """Same key, different arguments: refused, and the tool is not run again."""
    pay = probe("pay.send", effect="write")
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as run:
        run.call("pay.send", {"q": "40"}, idempotency_key="refund-7")
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("pay.send", {"q": "400"}, idempotency_key="refund-7")
        assert rejected.value.reason == "tool_denied"
        assert rejected.value.detail == "idempotency_mismatch"
        assert run.usage.tool_calls == 1
    assert pay.calls == ["40"]


def test_a_caller_key_protects_across_runs_of_a_tenant(probe, store):
    """The caller's key holds across runs of one tenant, and not across tenants."""
    pay = probe("pay.send", effect="write")
    for tenant in ("acme", "acme", "globex"):
        with corral.Run(allow("pay.send"), tools=[pay.tool], store=store, tenant=tenant) as run:
            run.call("pay.send", {"q": "40"}, idempotency_key="refund-7")
    assert pay.count == 2


def test_idempotency_key_from_fields_stops_the_same_refund_in_two_runs(store):
    """A key derived from declared fields holds across runs: the same refund is sent once."""
    sent = []

    @corral.tool(name="refund.send", effect="write", idempotency_key_from=["order"])
    def refund(order: str, note: str = "") -> str:
        sent.append(order)
        return f"refunded {order}"

    for note in ("first try", "first try"):
        with corral.Run(allow("refund.send"), tools=[refund], store=store) as run:
            assert run.call("refund.send", {"order": "A-1", "note": note}) == "refunded A-1"
    assert sent == ["A-1"]


def test_not_executed_releases_the_key(store):
    """A tool raising ``NotExecuted`` frees its key: the same call may run later."""
    attempts = []

    @corral.tool(name="pay.send", effect="write")
    def pay(q: str) -> str:
        attempts.append(q)
        if len(attempts) == 1:
            raise corral.NotExecuted("gateway busy, nothing charged")
        return "paid"

    with corral.Run(allow("pay.send"), tools=[pay], store=store) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("pay.send", {"q": "x"}, idempotency_key="k")
        assert rejected.value.detail == "not_executed"
        assert run.call("pay.send", {"q": "x"}, idempotency_key="k") == "paid"
    assert len(attempts) == 2


def test_a_write_that_failed_is_not_run_again_on_resume(probe, store):
    """A write that raised may have half-happened: a resumed run gets the failure, not a rerun."""
    pay = probe("pay.send", effect="write", fails=1)
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as first:
        first.call("pay.send", {"q": "x"})
    assert first.result.stop_reason == "tool_error"
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store, run_id=first.id) as again:
        again.call("pay.send", {"q": "x"})
    assert again.result.stop_reason == "tool_error"
    assert "not run again" in again.result.stop.message
    assert pay.count == 1


def test_a_write_abandoned_at_its_deadline_keeps_its_key_in_flight(store):
    """A timed-out write may still be running: the same key is not executed again."""
    release = threading.Event()
    started = []

    @corral.tool(name="pay.send", effect="write", timeout=0.05)
    def pay(q: str) -> str:
        started.append(q)
        release.wait(2)
        return "paid"

    def agent(result: dict[str, Any]) -> None:
        with corral.Run(allow("pay.send"), tools=[pay], store=store) as first:
            first.call("pay.send", {"q": "x"}, idempotency_key="k")
        with corral.Run(allow("pay.send"), tools=[pay], store=store) as second:
            second.call("pay.send", {"q": "x"}, idempotency_key="k")
        result.update(first=first.result, second=second.result)

    out: dict[str, Any] = {}
    worker = threading.Thread(target=agent, args=(out,))  # the abandon path
    worker.start()
    worker.join(2)
    release.set()
    assert out["first"].stop_reason == "tool_error"
    assert out["second"].stop_reason == "tool_error"
    assert out["second"].stop.extra == {
        "why": "in_flight",
        "idempotency": "in_flight",
        "key": "caller:pay.send:k",
    }
    assert started == ["x"]


def test_the_tool_gets_its_idempotency_key_and_the_run_in_its_context(store):
    """``ctx`` carries the key, run id, tenant and agent; it is not part of the arguments."""
    seen: list[corral.ToolContext] = []

    @corral.tool(name="pay.send", effect="write")
    def pay(q: str, ctx: corral.ToolContext) -> str:
        seen.append(ctx)
        return "paid"

    assert "ctx" not in pay.args_schema["properties"]
    with corral.Run(allow("pay.send"), tools=[pay], store=store, tenant="acme", agent="bot") as run:
        run.call("pay.send", {"q": "x"}, idempotency_key="order-9")
    [ctx] = seen
    assert (ctx.run_id, ctx.tenant, ctx.agent, ctx.tool) == (run.id, "acme", "bot", "pay.send")
    assert ctx.idempotency_key is not None and "order-9" in ctx.idempotency_key


# -- authorize, execute yourself, report --------------------------------------------------


def test_authorize_then_report_charges_once_and_returns_the_clean_observation(store):
    """authorize holds the budget; report settles it and returns the cleaned output."""
    search = corral.tool(lambda q: "never", name="search.read", effect="read", cost_usd="0.25")
    with corral.Run(allow("search.read"), tools=[search], store=store) as run:
        ticket = run.authorize("search.read", {"q": "x"})
        assert (ticket.tool, dict(ticket.arguments), ticket.replayed) == (
            "search.read",
            {"q": "x"},
            False,
        )
        assert run.usage.tool_calls == 0
        observation = run.report(ticket, "<p>vendor <b>up</b></p><script>x()</script>")
        assert observation == "vendor\nup"
        assert (run.usage.tool_calls, run.usage.usd) == (1, Decimal("0.25"))


def test_an_authorized_cached_read_is_handed_back_without_executing(store):
    """A ticket for a read already in the cache is ``replayed`` with the cached output."""
    search = corral.tool(lambda q: "never", name="search.read", effect="read")
    with corral.Run(allow("search.read"), tools=[search], store=store) as run:
        run.report(run.authorize("search.read", {"q": "x"}), "fresh")
        ticket = run.authorize("search.read", {"q": "x"})
        assert ticket.replayed
        assert ticket.output == "fresh"
        assert run.usage.tool_calls == 1


def test_report_failure_charges_the_attempt_and_stops_with_tool_error(store):
    """A failure reported by the caller is charged and ends the run with ``tool_error``."""
    search = corral.tool(lambda q: "never", name="search.read", effect="read", cost_usd="0.25")
    with corral.Run(allow("search.read"), tools=[search], store=store) as run:
        ticket = run.authorize("search.read", {"q": "x"})
        run.report_failure(ticket, ConnectionError("vendor down"))
    assert run.result.stop_reason == "tool_error"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.25"))


def test_authorize_refuses_a_call_the_policy_does_not_allow(store):
    """authorize applies the whole gateway: a denied tool gets no ticket."""
    browser = corral.tool(lambda q: "never", name="browser.open", effect="read")
    with (
        corral.Run(allow(), tools=[browser], store=store) as run,
        pytest.raises(corral.Stop) as stop,
    ):
        run.authorize("browser.open", {"q": "x"})
    assert stop.value.reason == "tool_denied"
    assert run.result.usage.tool_calls == 0


def test_a_ticket_cannot_be_reported_twice(store):
    """Reporting the same ticket twice is a developer mistake, not a second charge."""
    search = corral.tool(lambda q: "never", name="search.read", effect="read")
    with corral.Run(allow("search.read"), tools=[search], store=store) as run:
        ticket = run.authorize("search.read", {"q": "x"})
        run.report(ticket, "one")
        with pytest.raises(corral.ConfigError):
            run.report(ticket, "two")
        assert run.usage.tool_calls == 1


def test_an_authorized_call_that_no_longer_fits_is_refused(store):
    """A ticket holds its budget: a second authorize that would pass the cap is refused."""
    search = corral.tool(lambda q: "never", name="search.read", effect="read", cost_usd="0.6")
    policy = allow("search.read", budgets={"max_usd": 1})
    with corral.Run(policy, tools=[search], store=store) as run:
        run.authorize("search.read", {"q": "a"})
        with pytest.raises(corral.Stop) as stop:
            run.authorize("search.read", {"q": "b"})
    assert str(stop.value) == "max_usd:run (limit 1.00, would be 1.20)"


def test_changing_a_served_observation_does_not_change_the_cache(store):
    """A caller mutating what it got does not change what the next identical read is served."""

    @corral.tool(name="rows.read", effect="read")
    def rows(q: str) -> dict[str, list[str]]:
        return {"rows": ["a", "b"]}

    with corral.Run(allow("rows.read"), tools=[rows], store=store) as run:
        first = run.call("rows.read", {"q": "x"})
        first["rows"].append("injected")
        assert run.call("rows.read", {"q": "x"}) == {"rows": ["a", "b"]}


def test_the_same_write_twice_in_one_run_runs_once(probe, store):
    """Without a key, a write's key comes from run, tool and arguments: a repeat is a replay."""
    pay = probe("pay.send", effect="write", returns=lambda q: f"paid {q}")
    with corral.Run(allow("pay.send"), tools=[pay.tool], store=store) as run:
        assert run.call("pay.send", {"q": "40"}) == "paid 40"
        assert run.call("pay.send", {"q": "40"}) == "paid 40"
        assert run.call("pay.send", {"q": "41"}) == "paid 41"
    assert pay.calls == ["40", "41"]
    assert run.result.usage.tool_calls == 2


def test_reusing_a_key_with_other_arguments_is_bounded(store):
    """A key clash is handed back, but counted: repeating it stops the run."""
    sent = []

    @corral.tool(name="refund.send", effect="write", idempotency_key_from=["order"])
    def refund(order: str, note: str = "") -> str:
        sent.append(note)
        return "refunded"

    policy = allow("refund.send", tools={"max_invalid_args": 2})
    with corral.Run(policy, tools=[refund], store=store) as run:
        run.call("refund.send", {"order": "A-1", "note": "first"})
        for i in range(10):
            try:
                run.call("refund.send", {"order": "A-1", "note": f"again {i}"})
            except corral.ToolRejected as rejected:
                assert rejected.detail == "idempotency_mismatch"
    assert str(run.result.stop) == "tool_denied:refund.send (idempotency_mismatch)"
    assert run.result.stop.extra == {"why": "idempotency_mismatch"}
    assert sent == ["first"]
    assert run.result.usage.tool_calls == 1
