"""Idempotent writes through the public API: leases renewed by the live process, waiting for
a claim in flight, ``unknown`` claims and the ``reconcile`` hook, the lookup before approval,
and retries only for writes declared idempotent. On SQLite and PostgreSQL (a dead process is
a forked child killed with SIGKILL: see ``tests/crash.py``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.stores import Store
from corral.stores.sqlite import SQLiteStore
from crash import POLICY, effects, pay, pay_and_die, pay_tool, quick_leases
from crash import pg as crash_pg

LEASE = 0.4


#: Leases of 0.4 s renewed every 0.1 s, so a dead process's claim lapses quickly: every
#: run of this module is given them.
QUICK = quick_leases(LEASE)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store that outlives a process: SQLite, then PostgreSQL."""
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "corral.db")
        try:
            yield store
        finally:
            store.close()
        return
    with crash_pg().fresh_store(crash_pg().require_postgres()) as pg:
        yield pg


def left_unknown(store: Store, path: Path, order: str, point: str) -> None:
    """Pay ``order`` in a process killed at ``point``, and wait until its claim is unknown."""
    assert pay_and_die(store, path, order, point, services=QUICK) < 0
    time.sleep(LEASE + 0.15)
    [claim] = store.list_claims(now=time.time(), status="unknown")
    assert claim.tool == "pay.send"


def claim_states(store: Store) -> set[str]:
    return {c.status for c in store.list_claims(now=time.time())}


# -- leases and claims in flight -----------------------------------------------------------


def test_a_live_write_keeps_its_claim_in_flight_past_its_lease(durable, tmp_path):
    """A write running for 3 leases is renewed by its process: never unknown, then done."""
    path = tmp_path / "effects.log"
    seen: list[set[str]] = []
    worker = threading.Thread(
        target=lambda: pay_tool_run(durable, path, "A-1", sleep=3 * LEASE), daemon=True
    )
    worker.start()
    while worker.is_alive():
        states = claim_states(durable)
        if states:
            seen.append(states)
        time.sleep(0.05)
    assert "unknown" not in set().union(*seen)
    assert seen.count({"in_flight"}) >= 10
    assert claim_states(durable) == {"done"}
    assert effects(path) == ["A-1"]


def pay_tool_run(store: Store, path: Path, order: str, *, sleep: float = 0.0) -> Any:
    with corral.Run(
        POLICY, tools=[pay_tool(path, sleep=sleep)], store=store, services=QUICK
    ) as run:
        return run.call("pay.send", {"order": order})


def test_a_claim_in_flight_is_waited_for_then_replayed(durable, tmp_path):
    """A second run meeting the key in flight waits, then replays its outcome: one payment."""
    path = tmp_path / "effects.log"
    worker = threading.Thread(
        target=pay_tool_run, args=(durable, path, "A-1"), kwargs={"sleep": 0.5}
    )
    worker.start()
    while claim_states(durable) != {"in_flight"}:
        time.sleep(0.01)
    assert pay_tool_run(durable, path, "A-1") == "paid A-1"
    worker.join()
    assert effects(path) == ["A-1"]


def test_a_claim_still_in_flight_after_the_wait_stops_retryable(durable):
    """Still in flight after the tool's timeout: ``tool_error`` detail ``in_flight``, retryable.

    The first call was abandoned at its deadline in a worker thread: its claim stays renewed
    while that thread runs, and becomes unknown once the thread has ended.
    """
    release = threading.Event()
    ran: list[str] = []

    @corral.tool(name="pay.send", effect="write", timeout=0.3)
    def slow_pay(order: str) -> str:
        ran.append(order)
        release.wait(5)
        return "paid"

    def first() -> None:
        with corral.Run(POLICY, tools=[slow_pay], store=durable, services=QUICK) as run:
            run.call("pay.send", {"order": "A-1"}, idempotency_key="A-1")
        assert run.result.stop_reason == "tool_error"  # timed out, abandoned

    worker = threading.Thread(target=first)  # off the main thread: abandoned, not interrupted
    worker.start()
    worker.join()
    with corral.Run(POLICY, tools=[slow_pay], store=durable, services=QUICK) as run:
        run.call("pay.send", {"order": "A-1"}, idempotency_key="A-1")
    stop = run.result.stop
    assert (stop.reason, stop.why, stop.retryable) == ("tool_error", "in_flight", True)
    assert stop.extra == {
        "why": "in_flight",
        "idempotency": "in_flight",
        "key": "caller:pay.send:A-1",
    }
    assert "still in flight after waiting 0.3 s (the tool's timeout is 0.3 s)" in stop.message
    time.sleep(LEASE + 0.1)
    assert claim_states(durable) == {"in_flight"}  # the abandoned thread still runs
    release.set()
    time.sleep(LEASE + 0.3)
    assert claim_states(durable) == {"unknown"}
    assert ran == ["A-1"]


# -- unknown claims and reconcile ----------------------------------------------------------


def test_an_unknown_claim_is_never_run_again_without_a_hook(durable, tmp_path):
    """A claim whose process died mid-write stops the run: ``outcome_unknown``, not retryable."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "after_claim")
    result = pay(durable, path, "A-1", services=QUICK)
    stop = result.stop
    assert (stop.reason, stop.why, stop.retryable) == ("tool_error", "outcome_unknown", False)
    assert "corral idempotency resolve" in stop.message and stop.extra["key"] in stop.message
    assert effects(path) == []
    assert claim_states(durable) == {"unknown"}


def test_reconcile_that_finds_the_effect_stores_and_replays_it(durable, tmp_path):
    """The hook says the payment happened: its outcome is stored and replayed, nothing reruns."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "after_tool")
    result = pay(durable, path, "A-1", reconcile=True, services=QUICK)
    assert result.status == "ok"
    [claim] = durable.list_claims(now=time.time())
    assert claim.status == "done" and claim.outcome == {"output": "paid A-1"}
    assert (
        pay(durable, path, "A-1", services=QUICK).status == "ok"
    )  # replayed, no hook needed any more
    assert effects(path) == ["A-1"]


def test_reconcile_not_executed_takes_the_claim_over_and_runs_once(durable, tmp_path):
    """The hook says nothing happened: this call takes the claim over and pays, once."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "inside_tool")
    assert pay(durable, path, "A-1", reconcile=True, services=QUICK).status == "ok"
    assert pay(durable, path, "A-1", reconcile=True, services=QUICK).status == "ok"
    assert effects(path) == ["A-1"]
    assert claim_states(durable) == {"done"}


def test_a_hook_that_cannot_tell_leaves_the_claim_unknown(durable, tmp_path):
    """A hook raising anything but NotExecuted: ``outcome_unknown`` naming its error."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "after_claim")

    def ask_vendor(key: str, args: Mapping[str, Any], ctx: corral.ToolContext) -> str:
        assert ctx.idempotency_key == key and ctx.tool == "pay.send"
        raise ConnectionError("vendor ledger unreachable")

    base = pay_tool(path)
    tool = corral.tool(
        base.fn, name="pay.send", idempotency_key_from=["order"], reconcile=ask_vendor
    )
    with corral.Run(POLICY, tools=[tool], store=durable, services=QUICK) as run:
        run.call("pay.send", {"order": "A-1"})
    assert run.result.stop.why == "outcome_unknown"
    assert "vendor ledger unreachable" in run.result.stop.message
    assert claim_states(durable) == {"unknown"} and effects(path) == []


def test_only_one_of_several_runs_settles_an_unknown_claim(durable, tmp_path):
    """Runs meeting one unknown claim at once, each with a hook: the tool runs exactly once."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "after_claim")
    results: list[str] = []

    def go() -> None:
        results.append(pay(durable, path, "A-1", reconcile=True, services=QUICK).status)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 4
    assert effects(path) == ["A-1"]


def test_an_async_run_reconciles_an_unknown_claim(durable, tmp_path):
    """``AsyncRun`` meets the unknown claim the same way: the hook settles it."""
    path = tmp_path / "effects.log"
    left_unknown(durable, path, "A-1", "before_outcome")

    async def main() -> Any:
        tool = pay_tool(path, reconcile=True)
        async with corral.AsyncRun(POLICY, tools=[tool], store=durable, services=QUICK) as run:
            return await run.call("pay.send", {"order": "A-1"})

    assert asyncio.run(main()) == "paid A-1"
    assert effects(path) == ["A-1"]


def test_reconcile_must_be_a_function():
    """``reconcile=`` that is not callable is a definition error."""
    with pytest.raises(corral.ToolDefinitionError, match="reconcile must be a function"):
        corral.tool(lambda order: order, name="pay.send", reconcile="yes")  # type: ignore[arg-type]


# -- lookup before approval ----------------------------------------------------------------


def test_a_done_write_is_replayed_without_asking_for_approval_again(store):
    """A resumed run repeating a write already done replays it; the approver is not asked."""
    asked: list[str] = []
    paid: list[str] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        asked.append(request.tool)
        return True

    @corral.tool(name="pay.send", effect="write")
    def pay_once(order: str) -> str:
        paid.append(order)
        return f"paid {order}"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["pay.send"]}, "writes": {"require_approval": True}}
    )
    with corral.Run(
        policy, tools=[pay_once], store=store, approver=approver, services=QUICK
    ) as first:
        assert first.call("pay.send", {"order": "A-1"}) == "paid A-1"
    with corral.Run(
        policy, tools=[pay_once], store=store, approver=approver, run_id=first.id, services=QUICK
    ) as again:
        assert again.call("pay.send", {"order": "A-1"}) == "paid A-1"
        with pytest.raises(corral.ToolRejected) as rejected:
            again.call("pay.send", {"order": "B-2"}, idempotency_key="k")
            again.call("pay.send", {"order": "B-3"}, idempotency_key="k")
        assert rejected.value.detail == "idempotency_mismatch"
    assert paid == ["A-1", "B-2"]
    assert asked == ["pay.send", "pay.send"]  # A-1 once, B-2 once; never the replay or B-3


# -- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(("idempotent", "runs"), [(None, 1), (False, 1), (True, 3)])
def test_a_write_is_retried_only_when_the_policy_declares_it_idempotent(store, idempotent, runs):
    """``retries: 2`` on a write: retried only with ``idempotent: true`` in its spec."""
    tries: list[int] = []

    @corral.tool(name="pay.send", effect="write")
    def flaky(order: str) -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("vendor hiccup")
        return "paid"

    spec: dict[str, Any] = {"retries": 2}
    if idempotent is not None:
        spec["idempotent"] = idempotent
    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["pay.send"], "specs": {"pay.send": spec}},
            "writes": {"require_approval": False},
        }
    )
    with corral.Run(policy, tools=[flaky], store=store, services=QUICK) as run:
        run.call("pay.send", {"order": "A-1"})
    assert len(tries) == runs
    assert run.result.stop_reason == ("ok" if idempotent else "tool_error")


def test_a_failed_attempt_of_a_retried_write_is_never_visible_as_its_outcome(durable):
    """Between a failed attempt and its retry the key stays in flight: no other process can
    replay the failure that the retry then turns into a success."""
    seen: list[str] = []

    @corral.tool(name="pay.send", effect="write", idempotent=True, retries=1)
    def flaky(order: str, ctx: corral.ToolContext) -> str:
        [claim] = durable.list_claims(now=time.time())
        seen.append(claim.status)
        if ctx.attempt == 1:
            raise ConnectionError("vendor hiccup")
        return "paid"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["pay.send"]}, "writes": {"require_approval": False}}
    )
    with corral.Run(policy, tools=[flaky], store=durable, services=QUICK) as run:
        assert run.call("pay.send", {"order": "A-1"}, idempotency_key="A-1") == "paid"
    assert seen == ["in_flight", "in_flight"]
    [claim] = durable.list_claims(now=time.time())
    assert claim.status == "done" and claim.outcome == {"output": "paid"}


# -- writes the caller executes itself -------------------------------------------------------


def test_a_write_the_caller_executes_holds_its_claim_until_reported(durable, tmp_path):
    """``authorize`` claims the key and keeps it renewed until ``report``; a dropped ticket
    stops the renewal, so its claim becomes unknown."""
    import gc

    path = tmp_path / "effects.log"
    with corral.Run(POLICY, tools=[pay_tool(path)], store=durable, services=QUICK) as run:
        ticket = run.authorize("pay.send", {"order": "A-1"})
        assert not ticket.replayed and ticket.idempotency_key
        time.sleep(3 * LEASE)
        assert claim_states(durable) == {"in_flight"}
        assert run.report(ticket, "paid A-1") == "paid A-1"
        assert claim_states(durable) == {"done"}
        dropped = run.authorize("pay.send", {"order": "B-2"})
        key = dropped.idempotency_key
        del dropped
        gc.collect()
        time.sleep(LEASE + 0.2)
        [claim] = durable.list_claims(now=time.time(), status="unknown")
        assert claim.key == key


def test_a_run_killed_mid_write_and_resumed_by_id_never_pays_twice(durable, tmp_path):
    """A run dies after paying; resumed by id, its run-keyed write is unknown, then reconciled."""
    from crash import DyingStore, in_child

    path = tmp_path / "effects.log"
    run_id = "run_killed_mid_write"

    def work() -> None:
        tool = pay_tool(path, point="after_tool", by_order=False)
        with corral.Run(
            POLICY, tools=[tool], store=DyingStore(durable, None), run_id=run_id, services=QUICK
        ) as r:
            r.call("pay.send", {"order": "A-1"})

    assert in_child(work) < 0
    time.sleep(LEASE + 0.15)
    for reconcile, detail in ((False, "outcome_unknown"), (True, "")):
        tool = pay_tool(path, reconcile=reconcile, by_order=False)
        with corral.Run(POLICY, tools=[tool], store=durable, run_id=run_id, services=QUICK) as run:
            run.call("pay.send", {"order": "A-1"})
        assert (run.result.stop.why if run.result.stop else "") == detail
    assert run.result.status == "ok" and effects(path) == ["A-1"]
    [claim] = durable.list_claims(now=time.time())
    assert claim.key.startswith(f"run:{run_id}:pay.send:") and claim.status == "done"
