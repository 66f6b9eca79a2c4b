"""The store contract: every backend must pass this suite unchanged."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import fresh_store, require_postgres

from conftest import POSTGRES_URL
from corral.record.audit import KeyRequired, verify
from corral.record.audit import records as audit_records
from corral.stores import Store, open_store
from corral.stores.base import (
    GENESIS,
    ApprovalRecord,
    ApprovalStore,
    AuditHead,
    BreakerState,
    BreakerStore,
    BudgetStore,
    ClaimStore,
    DegradeCounts,
    Event,
    EventStore,
    KillSwitchState,
    KillSwitchStore,
    Refusal,
    RunRecord,
    RunStore,
    ScopedCharge,
)
from corral.stores.chain import key_id, record_hash
from corral.stores.leases import Renewer
from corral.stores.memory import MemoryStore
from corral.stores.owner import RunOwner
from corral.stores.sqlite import SQLiteStore
from corral.stores.unavailable import UnavailableStore
from corral.testing import FaultyStore

# The `store` fixture (tests/stores/conftest.py) runs each test against every backend.


def test_backend_satisfies_the_protocol(store: Store) -> None:
    """Every backend is a runtime-checkable Store, and so each concern's Protocol."""
    assert isinstance(store, Store)
    for concern in (
        RunStore,
        EventStore,
        BudgetStore,
        KillSwitchStore,
        ApprovalStore,
        ClaimStore,
        BreakerStore,
    ):
        assert isinstance(store, concern)


def test_a_store_says_whether_other_processes_share_it(store: Store) -> None:
    """``shared``: a database (SQLite, PostgreSQL) is; the in-memory store is not, and a
    store wrapped for fault injection says what it wraps."""
    assert store.shared is (not isinstance(store, MemoryStore))
    assert FaultyStore(store).shared is store.shared
    assert UnavailableStore("down").shared is True


def test_runs_are_created_updated_and_listed_newest_first(store: Store) -> None:
    """Run records round-trip; updates change only the named fields; listing filters by tenant."""
    store.create_run(RunRecord(id="r1", tenant="acme", started_at=1.0))
    store.create_run(RunRecord(id="r2", tenant="other", started_at=2.0))
    store.create_run(RunRecord(id="r3", tenant="acme", started_at=3.0))
    store.update_run("r1", status="stopped", stop_reason="max_steps", usage={"steps": 30})
    r1 = store.get_run("r1")
    assert r1 is not None and r1.status == "stopped" and r1.stop_reason == "max_steps"
    assert r1.usage == {"steps": 30} and r1.tenant == "acme"
    assert [r.id for r in store.list_runs()] == ["r3", "r2", "r1"]
    assert [r.id for r in store.list_runs(tenant="acme")] == ["r3", "r1"]
    assert [r.id for r in store.list_runs(limit=1)] == ["r3"]
    assert store.get_run("missing") is None


def test_events_keep_their_order_per_run(store: Store) -> None:
    """Events come back in the order appended, per run."""
    store.create_run(RunRecord(id="r1"))
    store.create_run(RunRecord(id="r2"))
    store.append_events([Event(run_id="r1", seq=i, kind="step", at=float(i)) for i in range(1, 4)])
    store.append_events([Event(run_id="r2", seq=1, kind="step", at=0.0)])
    store.append_events([Event(run_id="r1", seq=4, kind="run_end", at=5.0, data={"x": 1})])
    assert [e.seq for e in store.events("r1")] == [1, 2, 3, 4]
    assert store.events("r1")[-1].data == {"x": 1}
    assert len(store.events("r2")) == 1


def test_scoped_reservation_is_all_or_nothing(store: Store) -> None:
    """A refusal in one scope holds nothing in the others, and names the refusing scope."""
    tenant = ScopedCharge(
        scope="tenant:acme/1d", calls=1, usd=Decimal("0.70"), max_usd=Decimal("1.00")
    )
    tool = ScopedCharge(scope="tool:browser.open/1d", calls=1, max_calls=5)
    first = store.reserve([tenant, tool], now=0.0)
    assert isinstance(first, str)
    second = store.reserve([tool, tenant], now=0.0)
    assert isinstance(second, Refusal)
    assert second.scope == "tenant:acme/1d" and second.dimension == "usd"
    assert second.limit == Decimal("1.00") and second.would_be == Decimal("1.40")
    # The tool scope was not charged by the refused reservation: four more calls fit.
    for _ in range(4):
        assert isinstance(
            store.reserve(
                [ScopedCharge(scope="tool:browser.open/1d", calls=1, max_calls=5)], now=0.0
            ),
            str,
        )
    refused = store.reserve(
        [ScopedCharge(scope="tool:browser.open/1d", calls=1, max_calls=5)], now=0.0
    )
    assert isinstance(refused, Refusal) and refused.dimension == "calls" and refused.would_be == 6


def test_settle_refunds_the_unused_part(store: Store) -> None:
    """Settling below the reservation gives the difference back to the scope."""
    cap = Decimal("1.00")
    grant = store.reserve([ScopedCharge(scope="t", usd=Decimal("0.90"), max_usd=cap)], now=0.0)
    assert isinstance(grant, str)
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.10"))])
    assert isinstance(
        store.reserve([ScopedCharge(scope="t", usd=Decimal("0.90"), max_usd=cap)], now=0.0), str
    )


def test_window_reopens_after_it_ends(store: Store) -> None:
    """A windowed scope starts again from zero once its window has ended; refusals say when."""
    charge = ScopedCharge(scope="w", calls=1, max_calls=1, window_ends=100.0)
    assert isinstance(store.reserve([charge], now=10.0), str)
    refused = store.reserve([charge], now=20.0)
    assert isinstance(refused, Refusal) and refused.retry_after == pytest.approx(80.0)
    assert isinstance(
        store.reserve(
            [ScopedCharge(scope="w", calls=1, max_calls=1, window_ends=200.0)], now=100.0
        ),
        str,
    )


def test_concurrent_reservations_never_pass_the_cap(store: Store) -> None:
    """Many threads reserving against one scope are granted exactly up to the cap."""
    granted: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            g = store.reserve(
                [
                    ScopedCharge(
                        scope="shared", calls=1, usd=Decimal("0.70"), max_usd=Decimal("50.00")
                    )
                ],
                now=0.0,
            )
            if isinstance(g, str):
                with lock:
                    granted.append(g)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 71  # floor(50.00 / 0.70)


def test_kill_switches_are_set_listed_and_cleared(store: Store) -> None:
    """Switches are keyed by scope and target; clearing reports whether one was set."""
    store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all", reason="incident"))
    store.set_kill_switch(KillSwitchState(scope="tool", target="browser.open"))
    assert {(s.scope, s.target) for s in store.kill_switches()} == {
        ("global", ""),
        ("tool", "browser.open"),
    }
    assert store.clear_kill_switch("global") is True
    assert store.clear_kill_switch("global") is False
    assert [s.target for s in store.kill_switches()] == ["browser.open"]


def test_a_kill_switch_records_when_it_was_set(store: Store) -> None:
    """The store fills in ``set_at`` (epoch seconds) and renews it when the switch is replaced."""
    before = time.time()
    store.set_kill_switch(KillSwitchState(scope="agent", target="bot", set_at=5.0))
    (first,) = store.kill_switches()
    assert before - 1 <= first.set_at <= time.time() + 1
    time.sleep(0.02)
    store.set_kill_switch(KillSwitchState(scope="agent", target="bot", mode="stop_all"))
    (second,) = store.kill_switches()
    assert second.mode == "stop_all" and second.set_at > first.set_at


def test_a_kill_switch_change_and_its_audit_record_are_written_together(store: Store) -> None:
    """``audit=`` appends the record with the change; a clear that finds nothing appends none."""

    def change(action: str) -> Event:
        return Event(run_id="-", seq=0, kind="kill_switch", at=1.0, data={"action": action},
                     actor="alice")  # fmt: skip

    store.set_kill_switch(KillSwitchState(scope="global"), audit=change("enable"))
    assert store.clear_kill_switch("tool", "x", audit=change("disable")) is False
    assert store.clear_kill_switch("global", audit=change("disable")) is True
    kinds = [(r.run_id, r.actor, r.data["action"]) for r in audit_records(store)]
    assert kinds == [("-", "alice", "enable"), ("-", "alice", "disable")]
    assert verify(store).ok
    assert store.list_runs() == []


def test_approvals_are_decided_once(store: Store) -> None:
    """A decided approval keeps its first decision; listing filters by status."""
    store.create_approval(
        ApprovalRecord(
            id="a1", run_id="r", tool="refund.send", args_digest="d", arguments={"amount": 5}
        )
    )
    assert [a.id for a in store.list_approvals()] == ["a1"]
    done = store.decide_approval("a1", "approved", approver="alice", reason="ok")
    assert done.status == "approved" and done.approver == "alice"
    again = store.decide_approval("a1", "denied", approver="mallory")
    assert again.status == "approved" and again.approver == "alice"
    assert store.list_approvals() == []
    assert [a.id for a in store.list_approvals(status=None)] == ["a1"]


def test_approval_records_keep_the_queue_fields_and_filter_by_tenant_and_run(
    store: Store,
) -> None:
    """The kill-switch fields and decision times round-trip; listing filters by tenant and run."""
    store.create_approval(
        ApprovalRecord(
            id="a1",
            run_id="r1",
            tool="refund.send",
            args_digest="d1",
            arguments={"amount": 5, "note": "ünï"},
            tenant="acme",
            agent="bot",
            created=100.0,
            expires=1000.0,
            kill_modes=("stop_all", "disable_expensive"),
            kill_mode="disable_expensive",
        )
    )
    store.create_approval(
        ApprovalRecord(id="a2", run_id="r2", tool="t", args_digest="d2", arguments={}, tenant="b")
    )
    a1 = store.get_approval("a1")
    assert a1 is not None and a1.kill_modes == ("stop_all", "disable_expensive")
    assert a1.kill_mode == "disable_expensive"
    assert a1.arguments == {"amount": 5, "note": "ünï"} and a1.expires == 1000.0
    assert a1.decided_at is None and a1.used_at is None
    assert [a.id for a in store.list_approvals(tenant="acme")] == ["a1"]
    a2 = store.get_approval("a2")
    assert a2 is not None and len(a2.kill_modes) == 3 and a2.kill_mode is None
    assert [a.id for a in store.list_approvals(run_id="r2")] == ["a2"]
    assert [a.id for a in store.list_approvals(status=None, tenant="b", run_id="r1")] == []
    assert [a.id for a in store.list_approvals(status=None)] == ["a1", "a2"]


def test_an_approval_moves_only_from_the_status_its_caller_expects(store: Store) -> None:
    """transition_approval changes a record only from the expected status; the loser gets None."""
    store.create_approval(
        ApprovalRecord(id="a1", run_id="r", tool="t", args_digest="d", arguments={})
    )
    approved = store.transition_approval(
        "a1", expect="pending", status="approved", at=5.0, approver="alice", reason="fine"
    )
    assert approved is not None and approved.status == "approved" and approved.decided_at == 5.0
    late = store.transition_approval(
        "a1", expect="pending", status="denied", at=6.0, approver="bob"
    )
    assert late is None
    used = store.transition_approval("a1", expect="approved", status="used", at=7.0)
    assert used is not None and used.status == "used" and used.used_at == 7.0
    assert used.approver == "alice" and used.reason == "fine" and used.decided_at == 5.0
    assert store.transition_approval("a1", expect="approved", status="used", at=8.0) is None
    assert [a.id for a in store.list_approvals(status="used")] == ["a1"]
    with pytest.raises(KeyError):
        store.transition_approval("nope", expect="pending", status="approved", at=1.0)


def test_of_concurrent_consumers_of_one_approval_exactly_one_wins(store: Store) -> None:
    """Eight threads consume one approval at once: one gets the record, seven get None."""
    store.create_approval(
        ApprovalRecord(id="a1", run_id="r", tool="t", args_digest="d", arguments={})
    )
    store.decide_approval("a1", "approved", approver="alice")
    ready = threading.Barrier(8)
    won: list[bool] = []

    def consume() -> None:
        ready.wait()
        got = store.transition_approval("a1", expect="approved", status="used", at=time.time())
        won.append(got is not None)

    workers = [threading.Thread(target=consume) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(won) == [False] * 7 + [True]


def test_idempotency_claims_follow_http_semantics(store: Store) -> None:
    """Claim once; same digest replays the outcome; other digest mismatches; release frees it."""
    assert store.claim("k", "d1", tenant="t", now=0.0, lease=10.0).status == "claimed"
    assert store.claim("k", "d1", tenant="t", now=1.0, lease=10.0).status == "in_flight"
    assert store.claim("k", "d2", tenant="t", now=1.0, lease=10.0).status == "mismatch"
    assert store.claim("k", "d1", tenant="other", now=1.0, lease=10.0).status == "claimed"
    store.complete("k", {"output": "sent"}, tenant="t")
    done = store.claim("k", "d1", tenant="t", now=2.0, lease=10.0)
    assert done.status == "done" and done.outcome == {"output": "sent"}
    store.release("k", tenant="other")
    assert store.claim("k", "d1", tenant="other", now=3.0, lease=10.0).status == "claimed"


def test_a_claim_whose_lease_expired_is_unknown_not_reclaimed(store: Store) -> None:
    """A claim without an outcome past its lease is 'unknown', never handed out again."""
    assert store.claim("k", "d", tenant=None, now=0.0, lease=5.0).status == "claimed"
    assert store.claim("k", "d", tenant=None, now=6.0, lease=5.0).status == "unknown"
    assert store.claim("k", "d", tenant=None, now=7.0, lease=5.0).status == "unknown"


def test_only_one_thread_claims_a_key(store: Store) -> None:
    """Of many concurrent claims of one key, exactly one is granted."""
    results: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        status = store.claim("once", "d", tenant="t", now=0.0, lease=60.0).status
        with lock:
            results.append(status)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("claimed") == 1 and results.count("in_flight") == 15


def test_a_live_claim_is_renewed_until_it_has_an_outcome(store: Store) -> None:
    """``renew_claim`` keeps a claim in flight past its first lease, and stops once it is done."""
    assert store.claim("k", "d", tenant="t", now=0.0, lease=5.0, tool="pay.send").status == (
        "claimed"
    )
    assert store.renew_claim("k", tenant="t", now=4.0, lease=5.0)
    assert store.claim("k", "d", tenant="t", now=8.0, lease=5.0).status == "in_flight"
    assert not store.renew_claim("k", tenant="other", now=8.0, lease=5.0)
    store.complete("k", {"output": 1}, tenant="t")
    assert not store.renew_claim("k", tenant="t", now=8.0, lease=5.0)
    assert not store.renew_claim("missing", tenant="t", now=8.0, lease=5.0)


def test_claims_are_looked_up_and_listed_with_a_derived_status(store: Store) -> None:
    """A claim reads in_flight, then unknown once its lease lapsed, done with an outcome."""
    store.claim("a", "d", tenant="t", now=0.0, lease=5.0, tool="pay.send")
    store.claim("b", "d", tenant="t", now=0.0, lease=50.0, tool="pay.send")
    store.claim("c", "d", tenant=None, now=0.0, lease=5.0, tool="mail.send")
    store.complete("c", {"output": "sent"}, tenant=None)
    assert store.lookup_claim("zzz", tenant="t", now=1.0) is None
    a = store.lookup_claim("a", tenant="t", now=1.0)
    assert a is not None and (a.status, a.tool, a.tenant, a.digest) == (
        "in_flight",
        "pay.send",
        "t",
        "d",
    )
    assert a.lease_until == 5.0 and a.outcome is None and a.created > 0
    later = store.lookup_claim("a", tenant="t", now=6.0)
    assert later is not None and later.status == "unknown"
    c = store.lookup_claim("c", tenant=None, now=6.0)
    assert c is not None and c.status == "done" and c.outcome == {"output": "sent"}
    assert c.tenant is None
    assert {x.key: x.status for x in store.list_claims(now=6.0)} == {
        "a": "unknown",
        "b": "in_flight",
        "c": "done",
    }
    assert [x.key for x in store.list_claims(now=6.0, status="unknown")] == ["a"]
    assert [x.key for x in store.list_claims(now=6.0, status="in_flight")] == ["b"]
    assert [x.key for x in store.list_claims(now=6.0, status="done")] == ["c"]
    assert sorted(x.key for x in store.list_claims(now=6.0, tenant="t")) == ["a", "b"]
    assert len(store.list_claims(now=6.0, limit=2)) == 2


def test_only_an_unknown_claim_can_be_resolved(store: Store) -> None:
    """``resolve_claim`` settles a claim only when it has no outcome and its lease lapsed."""
    store.claim("k", "d", tenant="t", now=0.0, lease=5.0)
    assert not store.resolve_claim("k", tenant="t", now=1.0, outcome={"output": "x"})  # live
    assert not store.resolve_claim("nope", tenant="t", now=9.0, outcome={"output": "x"})
    assert store.resolve_claim("k", tenant="t", now=9.0, outcome={"output": "x"})
    assert not store.resolve_claim("k", tenant="t", now=9.0, outcome={"output": "y"})  # done
    done = store.claim("k", "d", tenant="t", now=10.0, lease=5.0)
    assert done.status == "done" and done.outcome == {"output": "x"}


def test_resolving_not_executed_frees_the_key_or_hands_it_over(store: Store) -> None:
    """Not executed: without a lease the key is free again; with one the caller holds it."""
    store.claim("free", "d", tenant=None, now=0.0, lease=5.0)
    assert store.resolve_claim("free", tenant=None, now=9.0, outcome=None)
    assert store.claim("free", "d", tenant=None, now=9.0, lease=5.0).status == "claimed"
    store.claim("take", "d", tenant=None, now=0.0, lease=5.0)
    assert store.resolve_claim("take", tenant=None, now=9.0, outcome=None, lease=5.0)
    assert store.claim("take", "d", tenant=None, now=10.0, lease=5.0).status == "in_flight"
    assert not store.resolve_claim("take", tenant=None, now=10.0, outcome=None, lease=5.0)


def test_only_one_thread_settles_an_unknown_claim(store: Store) -> None:
    """Of many concurrent attempts to settle one unknown claim, exactly one succeeds."""
    store.claim("k", "d", tenant="t", now=0.0, lease=1.0)
    results: list[bool] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        if i % 2:
            won = store.resolve_claim("k", tenant="t", now=5.0, outcome=None, lease=60.0)
        else:
            won = store.resolve_claim("k", tenant="t", now=5.0, outcome={"output": i})
        with lock:
            results.append(won)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_breakers_open_then_half_open_after_cool_down(store: Store) -> None:
    """An open breaker reads half-open once its cool-down has passed."""
    assert store.breaker("browser.open", now=0.0).state == "closed"
    store.set_breaker("browser.open", BreakerState(state="open", until=30.0))
    assert store.breaker("browser.open", now=10.0).state == "open"
    assert store.breaker("browser.open", now=30.0).state == "half_open"


def test_degrade_counters_add_up_per_bucket_and_weigh_the_previous_one(store: Store) -> None:
    """Adds land in the UTC-aligned bucket covering ``now``; the window weighs the previous
    bucket by the share of it still inside; older buckets are gone; names are separate."""
    w = store.degrade_add("t", now=1000.0, size=60, calls=4, failures=1)  # bucket 960
    assert (w.current, w.previous) == (DegradeCounts(calls=4, failures=1), DegradeCounts())
    w = store.degrade_add("t", now=1019.0, size=60, calls=2, failures=2)
    assert w.current == DegradeCounts(calls=6, failures=3)
    w = store.degrade_add("t", now=1035.0, size=60, calls=1)  # bucket 1020, a quarter in
    assert (w.current, w.previous, w.weight) == (
        DegradeCounts(calls=1),
        DegradeCounts(calls=6, failures=3),
        0.75,
    )
    assert (w.calls, w.failures) == (5.5, 2.25)
    assert store.degrade_add("other", now=1035.0, size=60).calls == 0
    w = store.degrade_add("t", now=1140.0, size=60)  # bucket 1140: both earlier ones too old
    assert (w.current, w.previous) == (DegradeCounts(), DegradeCounts())
    store.degrade_add("t", now=1141.0, size=60, calls=3)
    store.degrade_reset("t")
    assert store.degrade_add("t", now=1142.0, size=60).current == DegradeCounts()


def test_a_retry_is_spent_only_while_it_fits_the_budget(store: Store) -> None:
    """``degrade_retry`` spends while retries + 1 <= ratio x calls + floor, counting the
    calls it is given first."""
    spend = lambda calls=0: store.degrade_retry(  # noqa: E731
        "t", now=500.0, size=100, ratio=0.2, floor=1, calls=calls
    )
    assert [spend(), spend()] == [True, False]  # the floor: one retry with no calls
    # With 10 calls the budget is 0.2 x 10 + 1 = 3 retries in all.
    assert [spend(calls=10), spend(), spend()] == [True, True, False]
    assert store.degrade_add("t", now=500.0, size=100).current == DegradeCounts(calls=10, retries=3)


def test_concurrent_retries_never_overspend_the_shared_budget(store: Store) -> None:
    """Threads spending at once get exactly the budget: 0.5 x 40 calls + 2 = 22 retries."""
    store.degrade_add("t", now=10.0, size=100, calls=40)
    spent: list[bool] = []

    def worker() -> None:
        for _ in range(10):
            spent.append(store.degrade_retry("t", now=10.0, size=100, ratio=0.5, floor=2))

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spent.count(True) == 22


def test_memory_urls_share_one_store_per_name() -> None:
    """`memory://` names one store per process, so runs naming it share state."""
    assert open_store("memory://contract-a") is open_store("memory://contract-a")
    assert open_store("memory://contract-a") is not open_store("memory://contract-b")
    given = MemoryStore()
    assert open_store(given) is given


def test_unknown_store_scheme_is_a_clear_error() -> None:
    """An unsupported URL names its scheme."""
    from corral.exceptions import ConfigError

    with pytest.raises(ConfigError, match="redis"):
        open_store("redis://localhost")


def test_usd_is_exact_not_floating_point(store: Store) -> None:
    """Ten charges of 0.1 fill a 1.0 cap exactly; the refusal's figure is an exact Decimal."""
    cap = Decimal("1.0")
    for _ in range(10):
        g = store.reserve([ScopedCharge(scope="cents", usd=Decimal("0.1"), max_usd=cap)], now=0.0)
        assert isinstance(g, str)
    refused = store.reserve(
        [ScopedCharge(scope="cents", usd=Decimal("0.000000001"), max_usd=cap)], now=0.0
    )
    assert isinstance(refused, Refusal)
    assert refused.would_be == Decimal("1.000000001") and isinstance(refused.would_be, Decimal)


def test_run_and_event_fields_round_trip(store: Store) -> None:
    """Every run field and nested event data come back as written."""
    stop = {"reason": "max_usd", "limit": "1.00", "observed": "1.40", "retryable": False}
    store.create_run(RunRecord(id="r1", tenant="acme", agent="bot", task="t ✓", started_at=5.5))
    store.update_run(
        "r1",
        status="stopped",
        stop_reason="max_usd",
        stop=stop,
        answer="partial ✓",
        usage={"usd": "1.40", "tool_calls_by_tool": {"browser.open": 3}},
        ended_at=9.25,
        would_stop=[{"reason": "max_steps"}],
        policy_digest="abc",
    )
    r = store.get_run("r1")
    assert r is not None
    assert (r.tenant, r.agent, r.task, r.started_at, r.ended_at) == (
        "acme",
        "bot",
        "t ✓",
        5.5,
        9.25,
    )
    assert (r.status, r.stop_reason, r.stop, r.answer) == ("stopped", "max_usd", stop, "partial ✓")
    assert r.usage == {"usd": "1.40", "tool_calls_by_tool": {"browser.open": 3}}
    assert [dict(w) for w in r.would_stop] == [{"reason": "max_steps"}] and r.policy_digest == "abc"
    data = {"tool": "kb.read", "args": {"q": ["a", None, 1.5, True]}, "text": "ünï"}
    store.append_events([Event(run_id="r1", seq=1, kind="tool_call", at=1.25, data=data)])
    (event,) = store.events("r1")
    assert (event.run_id, event.seq, event.kind, event.at, event.data) == (
        "r1",
        1,
        "tool_call",
        1.25,
        data,
    )


def test_missing_runs_and_approvals_are_key_errors(store: Store) -> None:
    """Updating a run or deciding an approval that does not exist raises KeyError."""
    with pytest.raises(KeyError):
        store.update_run("nope", status="ok")
    with pytest.raises(KeyError):
        store.decide_approval("nope", "approved", approver="alice")


def test_a_run_records_the_process_running_it(store: Store) -> None:
    """The store fills in the run's owner and heartbeat; a live owner's run is never marked."""
    before = time.time()
    store.create_run(RunRecord(id="mine"))
    run = store.get_run("mine")
    assert run is not None and run.owner == RunOwner.current()
    assert run.heartbeat_at is not None and run.heartbeat_at >= before
    assert store.mark_interrupted() == []
    assert store.mark_interrupted(now=time.time() + 10 * 86400.0) == []
    assert [r.status for r in store.list_runs()] == ["running"]


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_run_whose_process_died_is_marked_interrupted(store: Store) -> None:
    """A running run owned by a dead process on this machine is marked, with an event saying why."""
    me = RunOwner.current()
    ghost = RunOwner(host=me.host, node=me.node, pid=dead_pid())
    store.create_run(RunRecord(id="ghost", owner=ghost, heartbeat_at=100.0))
    store.append_events([Event(run_id="ghost", seq=1, kind="step", at=1.0)])
    store.create_run(RunRecord(id="done", owner=ghost, status="ok"))
    assert store.mark_interrupted() == ["ghost"]
    run = store.get_run("ghost")
    assert run is not None and run.status == "interrupted" and run.ended_at is not None
    assert [e.kind for e in store.events("ghost")] == ["step", "interrupted"]
    assert "no longer running" in store.events("ghost")[-1].data["why"]
    done = store.get_run("done")
    assert done is not None and done.status == "ok"
    assert store.mark_interrupted() == []


def test_a_run_elsewhere_is_interrupted_when_its_heartbeat_lapses(store: Store) -> None:
    """A run owned on another machine is judged by its lease; a heartbeat renews it."""
    far = RunOwner(host="elsewhere", node="elsewhere/boot/pid:[1]", pid=4242)
    now = time.time()
    store.create_run(RunRecord(id="far", owner=far, heartbeat_at=now - 100.0))
    store.create_run(RunRecord(id="kept", owner=far, heartbeat_at=now - 100.0))
    assert store.mark_interrupted(now=now, lease=300.0) == []
    store.heartbeat("kept")
    assert store.mark_interrupted(now=now + 250.0, lease=300.0) == ["far"]
    kept = store.get_run("kept")
    assert kept is not None and kept.status == "running"
    assert "no heartbeat" in store.events("far")[-1].data["why"]


# -- the audit chain ----------------------------------------------------------------------
def _events(run_id: str, first: int, count: int, **extra: object) -> list[Event]:
    return [
        Event(
            run_id=run_id,
            seq=i,
            kind="tool_call",
            at=1000.0 + i,
            data={"tool": "kb.read", "n": i, "usd": Decimal("0.10"), "ratio": 0.25, **extra},
            tenant="acme",
            actor="bot",
        )
        for i in range(first, first + count)
    ]


def test_appended_events_are_sealed_into_one_hash_chain(store: Store) -> None:
    """Each event becomes a record: seq from 1 without gaps, linked by hash, head at the end."""
    assert store.audit_head() == AuditHead()
    assert store.audit_records() == []
    store.create_run(RunRecord(id="r1", tenant="acme", agent="bot"))
    store.append_events(_events("r1", 1, 3))
    store.append_events(_events("r2", 1, 2, big=1e16, nested={"k": [1, "x"]}))
    records = store.audit_records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert [(r.run_id, r.event_seq) for r in records] == [
        ("r1", 1),
        ("r1", 2),
        ("r1", 3),
        ("r2", 1),
        ("r2", 2),
    ]
    prev = GENESIS
    for r in records:
        assert r.prev_hash == prev and r.hash == record_hash(r) and r.mode == "sha256"
        assert (r.tenant, r.actor, r.tool, r.kind) == ("acme", "bot", "kb.read", "tool_call")
        prev = r.hash
    assert records[0].data == {"tool": "kb.read", "n": 1, "usd": "0.10", "ratio": 0.25}
    assert records[-1].data["big"] == 10**16 and records[-1].data["nested"] == {"k": [1, "x"]}
    assert store.audit_head() == AuditHead(seq=5, hash=records[-1].hash)
    (event, *_) = store.events("r1")
    assert (event.tenant, event.actor) == ("acme", "bot")
    assert verify(store).ok


def test_the_same_events_hash_the_same_on_every_backend(store: Store) -> None:
    """The chain is over values, not one database's spelling: every backend agrees."""
    odd = {"text": "ünï\x00", "none": None, "flag": True, "zero": -0.0, "tiny": 1e-300}
    events = _events("r1", 1, 2, huge=1.5e300, **odd)
    reference = MemoryStore()
    reference.append_events(events)
    store.append_events(events)
    assert store.audit_head() == reference.audit_head()
    assert verify(store).ok


def test_audit_records_page_in_chain_order(store: Store) -> None:
    """``after`` and ``limit`` page through the chain; pages join without gaps or repeats."""
    for i in range(5):
        store.append_events(_events(f"r{i}", 1, 3))
    first = store.audit_records(limit=4)
    rest = store.audit_records(after=first[-1].seq, limit=100)
    assert [r.seq for r in first + rest] == list(range(1, 16))
    assert store.audit_records(after=15) == []
    assert [r.seq for r in audit_records(store, page=4)] == list(range(1, 16))


def test_concurrent_appenders_make_one_valid_chain(store: Store) -> None:
    """8 threads appending at once: every event is in the chain exactly once, and it verifies."""

    def worker(n: int) -> None:
        for batch in range(10):
            store.append_events(_events(f"t{n}", batch * 2 + 1, 2))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = verify(store)
    assert result.ok and result.checked == 160 == store.audit_head().seq
    for n in range(8):
        assert [e.seq for e in store.events(f"t{n}")] == list(range(1, 21))


def test_interrupted_runs_are_recorded_in_the_chain(store: Store) -> None:
    """The `interrupted` event a store writes itself is sealed like any other."""
    me = RunOwner.current()
    ghost = RunOwner(host=me.host, node=me.node, pid=dead_pid())
    store.create_run(RunRecord(id="ghost", tenant="acme", agent="bot", owner=ghost))
    store.append_events(_events("ghost", 1, 1))
    assert store.mark_interrupted() == ["ghost"]
    last = store.audit_records()[-1]
    assert (last.seq, last.kind, last.run_id, last.event_seq) == (2, "interrupted", "ghost", 2)
    assert (last.tenant, last.actor) == ("acme", "bot")
    assert verify(store).ok


def test_a_keyed_chain_verifies_only_with_its_key(
    new_store: Callable[[], AbstractContextManager[Store]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CORRAL_AUDIT_KEY set when the store opens, records are HMAC-sealed; the key is
    never stored, verification needs it, and another key is refused."""
    monkeypatch.setenv("CORRAL_AUDIT_KEY", "k3y-for-the-contract")
    with new_store() as store:
        store.append_events(_events("r1", 1, 3))
        records = store.audit_records()
        assert {r.mode for r in records} == {f"hmac-sha256:{key_id('k3y-for-the-contract')}"}
        assert all("k3y-for-the-contract" not in repr(r) for r in records)
        assert verify(store).ok and verify(store).keyed == 3
        monkeypatch.delenv("CORRAL_AUDIT_KEY")
        with pytest.raises(KeyRequired, match="CORRAL_AUDIT_KEY"):
            verify(store)
        wrong = verify(store, key="another key")
        assert not wrong.ok and wrong.broken is not None and wrong.broken.seq == 1
        assert "another key" in wrong.broken.why


# -- leased grants and rolling scopes -------------------------------------------------------
@pytest.fixture(params=("memory", "sqlite", "postgres"))
def leased(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Renewer]]:
    """A fresh store of each backend whose grants lease for 1 s, with a renewer that only
    renews when the test ticks it."""
    renewer = Renewer(interval=3600)
    options: dict[str, Any] = {"grant_lease": 1.0, "renewer": renewer}
    if request.param == "postgres":
        with fresh_store(require_postgres(POSTGRES_URL), **options) as pg:
            yield pg, renewer
        return
    s: Store = (
        MemoryStore(**options)
        if request.param == "memory"
        else SQLiteStore(tmp_path / "corral.db", **options)
    )
    try:
        yield s, renewer
    finally:
        s.close()


def _usd(usd: str, *, cap: str = "1.00", ends: float | None = None) -> ScopedCharge:
    return ScopedCharge(scope="t", usd=Decimal(usd), max_usd=Decimal(cap), window_ends=ends)


def test_a_lapsed_grant_is_reclaimed_and_refunded(leased: tuple[Store, Renewer]) -> None:
    """A grant nobody renewed is reclaimed once its lease lapses: its hold no longer counts."""
    store, _ = leased
    t = 1000.0
    grant = store.reserve([_usd("0.90", ends=t + 100)], now=t)
    assert isinstance(grant, str)
    assert isinstance(store.reserve([_usd("0.90", ends=t + 100)], now=t), Refusal)
    assert store.reclaim(t + 0.5) == 0  # the lease still runs
    assert store.reclaim(t + 2) == 1
    assert store.reclaim(t + 2) == 0
    assert store.scope_usage("t") == (0, Decimal(0))
    assert isinstance(store.reserve([_usd("0.90", ends=t + 100)], now=t + 2), str)


def test_reserve_reclaims_lapsed_grants_itself(leased: tuple[Store, Renewer]) -> None:
    """A reservation that meets a dead process's lapsed hold reclaims it first, and fits."""
    store, _ = leased
    t = 2000.0
    assert isinstance(store.reserve([_usd("0.90", ends=t + 100)], now=t), str)
    assert isinstance(store.reserve([_usd("0.90", ends=t + 100)], now=t + 5), str)
    assert store.scope_usage("t") == (0, Decimal("0.90"))


def test_a_renewed_grant_is_not_reclaimed(leased: tuple[Store, Renewer]) -> None:
    """While its holder renews it, a grant outlives its first lease; settling ends renewal."""
    store, renewer = leased
    t = time.time()
    grant = store.reserve([_usd("0.90", ends=t + 100)], now=t)
    assert isinstance(grant, str) and renewer.held == 1
    renewer.tick()  # renews from the wall clock: the lease now runs to about t + 1 + elapsed
    assert store.reclaim(t + 0.99) == 0
    assert store.renew_grants(t + 5) == 1
    assert store.reclaim(t + 5.9) == 0
    assert store.scope_usage("t") == (0, Decimal("0.90"))
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.40"))])
    assert store.renew_grants(t + 6) == 0
    renewer.tick()  # finds nothing outstanding: the store stops being renewed
    assert renewer.held == 0
    assert store.reclaim(t + 100) == 0
    assert store.scope_usage("t") == (0, Decimal("0.40"))


def test_one_renewal_covers_all_of_a_process_grants(leased: tuple[Store, Renewer]) -> None:
    """Many outstanding grants are renewed by one callback, in one store call."""
    store, renewer = leased
    t = time.time()
    grants = [store.reserve([_usd("0.10", ends=t + 100)], now=t) for _ in range(5)]
    assert all(isinstance(g, str) for g in grants) and renewer.held == 1
    assert store.renew_grants(t + 10) == 5
    assert store.reclaim(t + 10.5) == 0
    store.settle(str(grants[0]), [])
    assert store.renew_grants(t + 20) == 4
    assert store.reclaim(t + 20.5) == 0
    assert store.scope_usage("t") == (0, Decimal("0.40"))


def test_settling_a_reclaimed_grant_charges_the_actual_spend_once(
    leased: tuple[Store, Renewer],
) -> None:
    """A late settlement after a reclaim records the real spend, and settling again adds nothing."""
    store, _ = leased
    t = 3000.0
    grant = store.reserve([_usd("0.90", ends=t + 100)], now=t)
    assert isinstance(grant, str)
    assert store.reclaim(t + 2) == 1
    assert store.scope_usage("t") == (0, Decimal(0))
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.30"))])
    assert store.scope_usage("t") == (0, Decimal("0.30"))
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.30"))])
    assert store.scope_usage("t") == (0, Decimal("0.30"))


def test_a_reclaimed_hold_from_an_ended_window_is_dropped(leased: tuple[Store, Renewer]) -> None:
    """A hold whose window ended is neither refunded from nor settled into the next window."""
    store, _ = leased
    t = 4000.0
    grant = store.reserve([_usd("0.90", ends=t + 3)], now=t)
    assert isinstance(grant, str)
    assert isinstance(store.reserve([_usd("0.50", ends=t + 103)], now=t + 5), str)
    store.reclaim(t + 6)
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.90"))])
    assert store.scope_usage("t") == (0, Decimal("0.50"))


def _rolling(usd: str, now: float, *, bucket: float = 10.0, window: float = 60.0) -> ScopedCharge:
    start = (now // bucket) * bucket
    return ScopedCharge(
        scope="r",
        usd=Decimal(usd),
        max_usd=Decimal("1.00"),
        window_ends=start + bucket + window,
        rolling=True,
    )


def _spend(store: Store, usd: str, now: float) -> str | Refusal:
    """Reserve in the rolling scope and, if granted, settle at the amount (spent, not held)."""
    charge = _rolling(usd, now)
    grant = store.reserve([charge], now=now)
    if isinstance(grant, str):
        store.settle(grant, [charge])
    return grant


def test_a_rolling_scope_counts_the_buckets_still_in_its_window(store: Store) -> None:
    """A rolling scope sums its recent buckets; a refusal says when enough of them age out."""
    assert isinstance(_spend(store, "0.60", 5.0), str)
    assert isinstance(_spend(store, "0.30", 15.0), str)
    refused = _spend(store, "0.30", 25.0)
    assert isinstance(refused, Refusal) and refused.would_be == Decimal("1.20")
    assert refused.retry_after == pytest.approx(45.0)  # the 0.60 bucket leaves at 70
    assert isinstance(_spend(store, "0.30", 69.0), Refusal)
    assert isinstance(_spend(store, "0.30", 70.0), str)
    assert store.scope_usage("r") == (0, Decimal("0.60"))


def test_a_rolling_refusal_waits_for_as_many_buckets_as_it_needs(store: Store) -> None:
    """When one bucket ageing out is not enough, retry_after names the later one that is."""
    for now in (0.0, 10.0, 20.0):
        assert isinstance(_spend(store, "0.30", now), str)
    refused = _spend(store, "0.70", 30.0)
    assert isinstance(refused, Refusal)
    assert refused.retry_after == pytest.approx(50.0)  # at 80 only the 0.30 from t=20 is left


def test_settling_a_rolling_grant_changes_its_own_bucket(store: Store) -> None:
    """Settling below a rolling hold refunds its bucket, so the refund ages out with it."""
    grant = store.reserve([_rolling("0.90", 5.0)], now=5.0)
    assert isinstance(grant, str)
    store.settle(grant, [ScopedCharge(scope="r", usd=Decimal("0.20"))])
    assert isinstance(_spend(store, "0.80", 15.0), str)
    assert store.scope_usage("r") == (0, Decimal("1.00"))
    assert isinstance(_spend(store, "0.20", 70.0), str)
    assert store.scope_usage("r") == (0, Decimal("1.00"))


# -- limits per window: one usage per scope, every cap on it enforced ---------------------------
# The same store serves every example; each example has scope names of its own (a fresh tenant,
# agent and tool names, or a fresh prefix; for the fleet, calendar windows days apart), so no
# example sees another's usage.
NOW = 1_700_000_123.0  # one moment, inside every window an example uses
PERS = ("tenant", "agent", "tool", "global")
WINDOW_SECONDS = {"15m": 900, "1h": 3600, "60m": 3600, "1d": 86400, "24h": 86400}
_examples = iter(range(10**9))

# psycopg_pool's worker threads draw from the global `random` (reconnection jitter) whenever
# they open a connection: if one does so while Hypothesis draws an example, Hypothesis takes it
# for a strategy using `random`. The strategies here use none.
POOL_RANDOM = (
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)

cents = st.integers(min_value=0, max_value=150)
# (per, window, rolling, max_usd in cents or None, max_calls or None, which tool)
limit_entries = st.lists(
    st.tuples(
        st.sampled_from(PERS),
        st.sampled_from(sorted(WINDOW_SECONDS)),
        st.booleans(),
        st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
        st.one_of(st.none(), st.integers(min_value=1, max_value=6)),
        st.sampled_from("ab"),
    ).filter(lambda e: e[3] is not None or e[4] is not None),
    min_size=1,
    max_size=6,
)
# ("reserve", calls, cents, tool) | ("settle", which grant, calls, cents) | ("refund", which)
_reserve_op = st.tuples(st.just("reserve"), st.integers(0, 2), cents, st.sampled_from("ab"))
budget_ops = st.lists(
    st.one_of(
        _reserve_op,
        _reserve_op,  # twice as likely: enough holds to reach the caps
        st.tuples(st.just("settle"), st.integers(0, 9), st.integers(0, 3), cents),
        st.tuples(st.just("refund"), st.integers(0, 9)),
    ),
    min_size=3,
    max_size=16,
)


def _examples_for(store: Store, *, fast: int, postgres: int) -> int:
    """Hypothesis examples for ``store``: fewer on PostgreSQL, where each op is a round trip."""
    return postgres if type(store).__name__ == "PostgresStore" else fast


def _cents(value: int) -> Decimal:
    return Decimal(value) / 100


@pytest.mark.filterwarnings(POOL_RANDOM)
def test_limit_entries_on_one_scope_count_its_usage_once(store: Store) -> None:
    """Over random limit entries (same and different scopes, windows, rolling, caps, duplicates)
    and random reserve/settle/refund sequences, each scope's usage is what was committed plus
    held, and a reservation is refused exactly when some cap (the tightest) would be passed."""
    from corral.budgets import windows
    from corral.budgets.meter import Charge
    from corral.policy.schema import Policy

    @settings(
        max_examples=_examples_for(store, fast=60, postgres=15),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(entries=limit_entries, ops=budget_ops)
    def play(entries: list[tuple[Any, ...]], ops: list[tuple[Any, ...]]) -> None:
        n = next(_examples)
        tenant, agent, tools = f"ten{n}", f"ag{n}", {w: f"t{n}.{w}" for w in "ab"}
        now = NOW + n * 3 * 86400  # the fleet's calendar windows are this example's alone
        dicts = []
        for per, window, rolling, usd_cap, calls_cap, which in entries:
            # The fleet's rolling scope has one name for every example: left out here.
            rolling = rolling and per != "global"
            d: dict[str, Any] = {"per": per, "window": window, "rolling": rolling}
            if per == "tool":
                d["tool"] = tools[which]
            if usd_cap is not None:
                d["max_usd"] = _cents(usd_cap)
            if calls_cap is not None:
                d["max_calls"] = calls_cap
            dicts.append(d)
        policy = Policy.from_dict({"limits": dicts})

        # The model: one group per (per, subject, window length, rolling), its caps the
        # tightest of its entries', its scope named as a single-entry policy names it.
        def key(d: dict[str, Any]) -> tuple[Any, ...]:
            subject = {"tenant": tenant, "agent": agent, "global": "*"}.get(d["per"], d.get("tool"))
            return (d["per"], subject, WINDOW_SECONDS[d["window"]], d["rolling"])

        caps: dict[tuple[Any, ...], list[Any]] = {}
        names: dict[tuple[Any, ...], str] = {}
        for d in dicts:
            cap = caps.setdefault(key(d), [None, None])
            if "max_calls" in d:
                cap[0] = d["max_calls"] if cap[0] is None else min(cap[0], d["max_calls"])
            if "max_usd" in d:
                usd_cap = int(Decimal(d["max_usd"]) * 100)
                cap[1] = usd_cap if cap[1] is None else min(cap[1], usd_cap)
            one = Policy.from_dict({"limits": [d]})
            probe = Charge(tool_calls=1, tool=d.get("tool"))
            (only,) = windows.scoped(one, probe, tenant=tenant, agent=agent, now=now)
            names[key(d)] = only.scope
        used = {k: [0, 0] for k in caps}
        grants: list[tuple[str, list[ScopedCharge], dict[Any, tuple[int, int]]]] = []

        def touched(tool: str) -> list[tuple[Any, ...]]:
            return sorted({key(d) for d in dicts if d["per"] != "tool" or d["tool"] == tool})

        for op in ops:
            if op[0] == "reserve":
                _, calls, usd, which = op
                charge = Charge(tool_calls=calls, usd=_cents(usd), tool=tools[which])
                held = windows.scoped(policy, charge, tenant=tenant, agent=agent, now=now)
                groups = touched(tools[which]) if calls or usd else []
                assert sorted(c.scope for c in held) == sorted(names[g] for g in groups)
                refusing = set()
                for g in groups:
                    if caps[g][0] is not None and calls and used[g][0] + calls > caps[g][0]:
                        refusing.add((names[g], "calls", caps[g][0], used[g][0] + calls))
                    if caps[g][1] is not None and usd and used[g][1] + usd > caps[g][1]:
                        refusing.add(
                            (names[g], "usd", _cents(caps[g][1]), _cents(used[g][1] + usd))
                        )
                if not held:
                    continue
                got = store.reserve(held, now=now)
                if refusing:
                    assert isinstance(got, Refusal)
                    assert (got.scope, got.dimension, got.limit, got.would_be) in refusing
                else:
                    assert isinstance(got, str), got
                    for g in groups:
                        used[g][0] += calls
                        used[g][1] += usd
                    grants.append((got, held, {g: (calls, usd) for g in groups}))
            elif grants:
                grant, held, amounts = grants.pop(op[1] % len(grants))
                actual = (op[2], op[3]) if op[0] == "settle" else (0, 0)
                report = (
                    windows.settled(held, Charge(tool_calls=actual[0], usd=_cents(actual[1])))
                    if op[0] == "settle"
                    else []
                )
                store.settle(grant, report)
                for g, (calls, usd) in amounts.items():
                    used[g][0] += actual[0] - calls
                    used[g][1] += actual[1] - usd
            for g, (calls, usd) in used.items():
                assert store.scope_usage(names[g]) == (calls, _cents(usd)), (g, names[g])
        for grant, _, _ in grants:
            store.settle(grant, [])

    play()


# (scope index, calls, usd in cents, max_calls or None, max_usd in cents or None)
raw_charges = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 2),
        cents,
        st.one_of(st.none(), st.integers(0, 6)),
        st.one_of(st.none(), st.integers(0, 300)),
    ),
    max_size=6,
)
raw_ops = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), raw_charges),
        st.tuples(st.just("reserve"), raw_charges),
        st.tuples(
            st.just("settle"),
            st.integers(0, 9),
            st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), cents), max_size=5),
        ),
        st.tuples(st.just("refund"), st.integers(0, 9)),
    ),
    min_size=3,
    max_size=14,
)


@pytest.mark.filterwarnings(POOL_RANDOM)
def test_a_store_handed_one_scope_twice_counts_it_once(store: Store) -> None:
    """Charges naming one scope several times, at reserve or settle, count once on every
    backend: the largest figure of each dimension, against the tightest cap of each."""

    @settings(
        max_examples=_examples_for(store, fast=60, postgres=15),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ops=raw_ops)
    def play(ops: list[tuple[Any, ...]]) -> None:
        n = next(_examples)
        names = [f"raw{n}/calendar", f"raw{n}/open", f"raw{n}/rolling"]
        ends = [NOW + 600.0, None, NOW + 300.0]
        used = [[0, 0] for _ in names]
        grants: list[tuple[str, dict[int, tuple[int, int]]]] = []
        for op in ops:
            if op[0] == "reserve":
                merged: dict[int, list[Any]] = {}
                for i, calls, usd, max_calls, max_usd in op[1]:
                    m = merged.setdefault(i, [0, 0, None, None])
                    m[0], m[1] = max(m[0], calls), max(m[1], usd)
                    if max_calls is not None:
                        m[2] = max_calls if m[2] is None else min(m[2], max_calls)
                    if max_usd is not None:
                        m[3] = max_usd if m[3] is None else min(m[3], max_usd)
                refuses = any(
                    (mc is not None and c and used[i][0] + c > mc)
                    or (mu is not None and u and used[i][1] + u > mu)
                    for i, (c, u, mc, mu) in merged.items()
                )
                got = store.reserve(
                    [
                        ScopedCharge(
                            scope=names[i],
                            calls=calls,
                            usd=_cents(usd),
                            max_calls=max_calls,
                            max_usd=None if max_usd is None else _cents(max_usd),
                            window_ends=ends[i],
                            rolling=i == 2,
                        )
                        for i, calls, usd, max_calls, max_usd in op[1]
                    ],
                    now=NOW,
                )
                assert isinstance(got, Refusal) == refuses, (got, merged, used)
                if not refuses:
                    assert isinstance(got, str)
                    for i, (c, u, _, _) in merged.items():
                        used[i][0] += c
                        used[i][1] += u
                    grants.append((got, {i: (m[0], m[1]) for i, m in merged.items()}))
            elif grants:
                grant, held = grants.pop(op[1] % len(grants))
                report = op[2] if op[0] == "settle" else []
                actual: dict[int, list[int]] = {}
                for i, calls, usd in report:
                    a = actual.setdefault(i, [0, 0])
                    a[0], a[1] = max(a[0], calls), max(a[1], usd)
                store.settle(
                    grant,
                    [
                        ScopedCharge(
                            scope=names[i] if i < 3 else f"raw{n}/other", calls=c, usd=_cents(u)
                        )
                        for i, c, u in report
                    ],
                )
                for i, (c, u) in held.items():
                    a_calls, a_usd = actual.get(i, [0, 0])
                    used[i][0] += a_calls - c
                    used[i][1] += a_usd - u
            for i, name in enumerate(names):
                assert store.scope_usage(name) == (used[i][0], _cents(used[i][1])), name
        for grant, _ in grants:
            store.settle(grant, [])

    play()


def test_one_scope_charged_with_two_windows_is_refused(store: Store) -> None:
    """Two charges naming one scope must agree on its window: a programming error otherwise."""
    with pytest.raises(ValueError, match="different windows"):
        store.reserve(
            [
                ScopedCharge(scope="w2", calls=1, max_calls=5, window_ends=100.0),
                ScopedCharge(scope="w2", calls=1, max_calls=5, window_ends=200.0),
            ],
            now=0.0,
        )
    assert store.scope_usage("w2") == (0, Decimal(0))


BAD_COUNTS = [-1, -(10**9), True, 1.0, float("nan"), "1", None, 10**9 + 1, Decimal(1)]
BAD_AMOUNTS = [
    Decimal("-0.01"),
    Decimal("NaN"),
    Decimal("sNaN"),
    Decimal("Infinity"),
    Decimal("-Infinity"),
    0.5,
    1,
    True,
    "0.10",
    None,
]


@pytest.mark.parametrize(
    "field,value",
    [("calls", v) for v in BAD_COUNTS]
    + [("usd", v) for v in BAD_AMOUNTS]
    + [("max_calls", v) for v in (-1, True, 2.0, "5")]
    + [("max_usd", v) for v in (Decimal("-1"), Decimal("NaN"), 1.0)]
    + [("window_ends", v) for v in (float("nan"), float("inf"), "100")]
    + [("scope", v) for v in ("", None, 7)],
)
def test_a_reservation_with_an_impossible_figure_is_refused_and_holds_nothing(
    store: Store, field: str, value: Any
) -> None:
    """A negative, non-finite or ill-typed figure is a programming error (ValueError) on every
    backend, never a credit: nothing is held, and the scope's usage is unchanged."""
    good = ScopedCharge(scope="v", calls=1, usd=Decimal("0.50"), max_usd=Decimal("1.00"))
    grant = store.reserve([good], now=0.0)
    assert isinstance(grant, str)
    bad = ScopedCharge(**{**_fields(good), field: value})
    with pytest.raises(ValueError, match=field if field != "scope" else "scope"):
        store.reserve([good, bad], now=0.0)
    assert store.scope_usage("v") == (1, Decimal("0.50"))


@pytest.mark.parametrize(
    "field,value", [("calls", v) for v in BAD_COUNTS] + [("usd", v) for v in BAD_AMOUNTS]
)
def test_a_settlement_with_an_impossible_figure_is_refused_and_changes_nothing(
    store: Store, field: str, value: Any
) -> None:
    """Settling with a negative, non-finite or ill-typed figure raises ValueError and leaves
    the grant outstanding, so it can still be settled correctly."""
    grant = store.reserve(
        [ScopedCharge(scope="s", calls=1, usd=Decimal("0.50"), max_usd=Decimal("1.00"))], now=0.0
    )
    assert isinstance(grant, str)
    bad = ScopedCharge(**{"scope": "s", "calls": 1, "usd": Decimal("0.50"), field: value})
    with pytest.raises(ValueError, match=field):
        store.settle(grant, [bad])
    assert store.scope_usage("s") == (1, Decimal("0.50"))
    store.settle(grant, [ScopedCharge(scope="s", calls=1, usd=Decimal("0.20"))])
    assert store.scope_usage("s") == (1, Decimal("0.20"))


def _fields(c: ScopedCharge) -> dict[str, Any]:
    return {f: getattr(c, f) for f in ScopedCharge.__slots__}


# -- kill-switch calls: every scope and target shape, the same on every backend ------------------
TARGETS: dict[str, Any] = {
    "none": None,
    "empty": "",
    "name": "browser.open",
    "unicode": "tënant-ü-€-😀",
    "longest": "x" * 512,
    "longest_wide": "😀" * 512,  # 2 kB of UTF-8: still fits PostgreSQL's key index
    "too_long": "y" * 513,
    "nul": "a\x00b",
    "surrogate": "a\ud800b",
    "not_text": 5,
}
KILL_SCOPES = ("global", "tenant", "agent", "tool", "run")


def _stored_target(scope: str, shape: str) -> str | None:
    """The target a switch is stored under, or None when the switch must be refused."""
    if scope == "global":
        return "" if shape in ("none", "empty") else None
    return TARGETS[shape] if shape in ("name", "unicode", "longest", "longest_wide") else None


@pytest.mark.parametrize("shape", sorted(TARGETS))
@pytest.mark.parametrize("scope", KILL_SCOPES)
def test_a_kill_switch_is_kept_under_one_target_rule_on_every_backend(
    store: Store, scope: str, shape: str
) -> None:
    """global takes no target (None or ""); every other scope needs storable text of at most
    512 characters. A valid switch is set once (re-enabling replaces it), cleared once; an
    invalid one is a ConfigError naming the scope, on set and on clear, and nothing is kept."""
    from corral.exceptions import ConfigError

    target, expected = TARGETS[shape], _stored_target(scope, shape)
    switch = KillSwitchState(scope=scope, target=target, mode="stop_all")  # type: ignore[arg-type]
    if expected is None:
        with pytest.raises(ConfigError, match=scope if shape in ("none", "empty") else "target"):
            store.set_kill_switch(switch)
        with pytest.raises(ConfigError):
            store.clear_kill_switch(scope, target)  # type: ignore[arg-type]
        assert store.kill_switches() == []
        return
    store.set_kill_switch(switch)
    store.set_kill_switch(KillSwitchState(scope=scope, target=target, mode="disable_writes"))  # type: ignore[arg-type]
    assert [(s.scope, s.target, s.mode) for s in store.kill_switches()] == [
        (scope, expected, "disable_writes")
    ]
    assert store.clear_kill_switch(scope, target) is True  # type: ignore[arg-type]
    assert store.clear_kill_switch(scope, target) is False  # type: ignore[arg-type]
    assert store.kill_switches() == []


@pytest.mark.parametrize("shape", sorted(TARGETS))
@pytest.mark.parametrize("scope", KILL_SCOPES)
def test_enable_and_disable_agree_on_every_backend(store: Store, scope: str, shape: str) -> None:
    """killswitch.enable/disable accept and refuse the same switches on every backend:
    enable(target=None) is the global switch; a scope needing a target without one is a
    ConfigError naming it; each change is audited once, a clear of nothing not at all."""
    from corral.controls import killswitch
    from corral.exceptions import ConfigError

    target, expected = TARGETS[shape], _stored_target(scope, shape)
    if scope == "tool" and shape in ("unicode", "longest_wide"):
        expected = None  # not a tool name
    if expected is None:
        with pytest.raises(ConfigError) as raised:
            killswitch.enable(store, scope=scope, target=target, mode="stop_all")  # type: ignore[arg-type]
        if shape in ("none", "empty"):
            assert f"a {scope} kill switch needs a target" in str(raised.value)
        with pytest.raises(ConfigError):
            killswitch.disable(store, scope=scope, target=target)  # type: ignore[arg-type]
        assert store.kill_switches() == [] and list(audit_records(store)) == []
        return
    first = killswitch.enable(store, scope=scope, target=target, mode="stop_all", actor="ops")  # type: ignore[arg-type]
    again = killswitch.enable(store, scope=scope, target=target, actor="ops")  # type: ignore[arg-type]
    assert (first.scope, first.target, first.mode) == (scope, expected, "stop_all")
    assert (again.target, again.mode) == (expected, None)
    assert [(s.scope, s.target) for s in killswitch.active(store)] == [(scope, expected)]
    assert killswitch.disable(store, scope=scope, target=target, actor="ops") is True  # type: ignore[arg-type]
    assert killswitch.disable(store, scope=scope, target=target, actor="ops") is False  # type: ignore[arg-type]
    actions = [(r.data["action"], r.data["target"]) for r in audit_records(store)]
    assert actions == [("enable", expected), ("enable", expected), ("disable", expected)]
    assert verify(store).ok


@pytest.mark.parametrize("scope", KILL_SCOPES)
def test_clearing_a_switch_that_is_not_set_reports_false_and_records_nothing(
    store: Store, scope: str
) -> None:
    """A clear that finds nothing returns False and appends no audit record, for every scope."""
    target = "" if scope == "global" else "nobody"
    audit = Event(run_id="-", seq=0, kind="kill_switch", at=1.0, data={"action": "disable"})
    assert store.clear_kill_switch(scope, target, audit=audit) is False  # type: ignore[arg-type]
    assert list(audit_records(store)) == []


def test_kill_switch_modes_and_text_fields_are_checked_alike(store: Store) -> None:
    """An unknown mode, or a reason or actor no backend can store, is a ConfigError everywhere."""
    from corral.exceptions import ConfigError

    for bad in (
        KillSwitchState(scope="global", mode="off"),  # type: ignore[arg-type]
        KillSwitchState(scope="global", reason="a\x00b"),
        KillSwitchState(scope="global", actor="\udc80"),
        KillSwitchState(scope="unknown"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError):
            store.set_kill_switch(bad)
    assert store.kill_switches() == []
