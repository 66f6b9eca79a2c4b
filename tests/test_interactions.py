"""Where features meet: approvals, budgets and windows, idempotency, the kill switch, degrade,
credentials and observe mode exercised together, adversarially, through the public API and CLI.

Each test tries to break one of DESIGN.md's invariants at the seam between two features. The
store-sharing ones run on SQLite and, where the interaction is about the shared store, on a real
PostgreSQL server (skipped when there is none).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import corral
from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.cli.app import app
from corral.controls import approvals, killswitch
from corral.record import audit
from corral.stores.base import ScopedCharge, Store
from corral.stores.leases import Renewer
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore
from crash import effects, pay_tool, quick_leases
from crash import pg as crash_pg

WRITE = "refund.send"
READ = "browser.open"


@dataclass
class Shared:
    """A store other processes can reach, and the URL they reach it by."""

    store: Store
    url: str


def _sqlite(tmp_path: Path) -> Iterator[Shared]:
    path = tmp_path / "corral.db"
    store = SQLiteStore(str(path))
    try:
        yield Shared(store, f"sqlite:///{path}")
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    """A fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield from _sqlite(tmp_path)
        return
    pg = crash_pg()
    url = pg.require_postgres()
    with pg.fresh_store(url) as store:
        yield Shared(store, f"{url}?schema={store.schema}")


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Shared]:
    """A fresh SQLite file."""
    yield from _sqlite(tmp_path)


@pytest.fixture
def short_leases() -> corral.Services:
    """Services whose idempotency claims are leased for 1 s (renewed every 0.2 s), so a
    dead process's claim becomes unknown quickly; given to the runs of the tests that ask."""
    return quick_leases(1.0, every=0.2)


def policy(*limits: dict[str, Any], **extra: Any) -> corral.Policy:
    """refund.send (a write, $0.70, needing approval) and browser.open (a read, $0.70)."""
    return corral.Policy.from_dict(
        {
            "tools": {"allow": [WRITE, READ], "specs": {READ: {"cache": False}}},
            "writes": {"require_approval": True, "approval_timeout_seconds": 30},
            "budgets": {"max_tool_calls": 50, "max_steps": 50},
            "limits": list(limits),
            **extra,
        }
    )


class Refunds:
    """refund.send (keyed by its order) and browser.open, counting every execution."""

    def __init__(self, *, by_order: bool = True) -> None:
        self.sent: list[str] = []
        self.lock = threading.Lock()

        def send(order: str, amount: int = 5) -> str:
            with self.lock:
                self.sent.append(order)
            return f"sent {order}"

        def browse(url: str) -> str:
            return "page"

        self.write = corral.tool(
            send,
            name=WRITE,
            effect="write",
            cost_usd="0.70",
            idempotency_key_from=["order"] if by_order else (),
        )
        self.read = corral.tool(browse, name=READ, effect="read", cost_usd="0.70")
        self.tools = [self.write, self.read]


class Agent(threading.Thread):
    """A governed run in a thread making one write; ``result`` once done."""

    def __init__(self, pol: corral.Policy, refunds: Refunds, store: Any, **run: Any) -> None:
        super().__init__(daemon=True)
        self.policy, self.refunds, self.store, self.options = pol, refunds, store, run
        self.args: dict[str, Any] = run.pop("args", {"order": "o-1"})
        self.result: corral.RunResult | None = None
        self.start()

    def run(self) -> None:
        with corral.Run(
            self.policy, tools=self.refunds.tools, store=self.store, **self.options
        ) as governed:
            governed.call(WRITE, self.args)
            governed.finish("done")
        self.result = governed.result

    def done(self, timeout: float = 20.0) -> corral.RunResult:
        self.join(timeout)
        assert not self.is_alive(), "the agent is still running"
        assert self.result is not None
        return self.result


def pending(store: Store, *, count: int = 1, timeout: float = 15.0) -> Any:
    """Wait until ``count`` approvals are pending; return the first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = store.list_approvals(status="pending")
        if len(found) >= count:
            return found[0]
        time.sleep(0.01)
    pytest.fail(f"{count} pending approval(s) never appeared")


def cli(*args: str) -> Any:
    """``corral ARGS`` through typer's runner (stderr kept apart)."""
    return CliRunner().invoke(app, list(args))


def tenant_scope(pol: corral.Policy, tenant: str = "acme", at: float | None = None) -> str:
    """The store scope of ``pol``'s first (tenant) limit."""
    now = time.time() if at is None else at
    return windows.scoped(pol, Charge(usd=Decimal(1)), tenant=tenant, agent=None, now=now)[0].scope


def verified(store: Store) -> None:
    """The audit chain verifies."""
    report = audit.verify(store)
    assert report.ok, report


# -- approvals x windowed budgets -------------------------------------------------------------
@pytest.mark.parametrize("rolling", [False, True])
def test_an_approval_wait_holds_no_budget_and_a_budget_spent_meanwhile_refuses_the_write(
    shared: Shared, rolling: bool
) -> None:
    """Waiting holds nothing (another run spends the tenant's budget meanwhile); the approved
    write then fails its reservation: it never runs, the stop names the tenant window, and the
    approval is consumed (single use: a retry after the window reopens asks again)."""
    pol = policy({"per": "tenant", "window": "1d", "max_usd": 1.00, "rolling": rolling})
    refunds = Refunds()
    waiter = Agent(pol, refunds, shared.store, tenant="acme", agent="bot")
    request = pending(shared.store)
    assert shared.store.scope_usage(tenant_scope(pol)) == (0, Decimal(0))  # nothing held
    with corral.Run(pol, tools=refunds.tools, store=shared.store, tenant="acme") as other:
        other.call(READ, {"url": "https://x.example"})
    assert other.result.stop_reason == "ok"
    approvals.approve(shared.store, request.id, approver="alice")
    result = waiter.done()
    assert result.stop_reason == "max_usd"
    assert result.stop is not None and result.stop.scope is not None
    assert result.stop.scope.startswith("tenant/1d")
    assert refunds.sent == []
    assert result.usage.usd == Decimal(0)
    assert shared.store.scope_usage(tenant_scope(pol))[1] == Decimal("0.70")
    after = shared.store.get_approval(request.id)
    assert after is not None and after.status == "used"
    verified(shared.store)


def test_an_approved_write_reserves_after_the_decision_and_settles(sqlite: Shared) -> None:
    """After approval the write reserves, runs once and settles its windowed charge exactly."""
    pol = policy({"per": "tenant", "window": "1h", "max_usd": 5, "rolling": True})
    refunds = Refunds()
    waiter = Agent(pol, refunds, sqlite.store, tenant="acme", agent="bot")
    request = pending(sqlite.store)
    assert (
        cli("approvals", "approve", request.id, "--as", "alice", "--db", sqlite.url).exit_code == 0
    )
    result = waiter.done()
    assert result.stop_reason == "ok" and refunds.sent == ["o-1"]
    assert sqlite.store.scope_usage(tenant_scope(pol)) == (1, Decimal("0.70"))  # one call
    assert result.usage.waiting_seconds > 0


# -- approvals x kill switch -------------------------------------------------------------------
def test_disable_writes_cancels_a_waiting_approval_and_a_resumed_run_asks_afresh(
    shared: Shared,
) -> None:
    """A disable_writes switch cancels the pending request (the run stops kill_switch, the tool
    never runs); once the switch is off, resuming the run files a new request rather than
    reusing the cancelled one, and the write then runs once."""
    pol = policy()
    refunds = Refunds()
    waiter = Agent(pol, refunds, shared.store, tenant="acme", agent="bot")
    first = pending(shared.store)
    out = cli("kill", "enable", "--mode", "disable_writes", "--as", "oncall", "--db", shared.url)
    assert out.exit_code == 0, out.output
    assert "cancelled 1 pending approval" in out.output
    stopped = waiter.done()
    assert stopped.stop_reason == "kill_switch" and refunds.sent == []
    cancelled = shared.store.get_approval(first.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    # The switch is still on: a resumed run is refused before anyone is asked.
    blocked = Agent(pol, refunds, shared.store, tenant="acme", agent="bot", run_id=first.run_id)
    assert blocked.done().stop_reason == "kill_switch"
    assert shared.store.list_approvals(status="pending") == []
    assert cli("kill", "disable", "--as", "oncall", "--db", shared.url).exit_code == 0
    time.sleep(1.1)  # a process sees a switch change within 1 s (its cached view)
    resumed = Agent(pol, refunds, shared.store, tenant="acme", agent="bot", run_id=first.run_id)
    second = pending(shared.store)
    assert second.id != first.id and second.run_id == first.run_id
    assert approvals.approve(shared.store, second.id, approver="alice").status == "approved"
    assert resumed.done().stop_reason == "ok"
    assert refunds.sent == ["o-1"]
    verified(shared.store)


def test_an_approval_decided_after_its_cancellation_is_refused(sqlite: Shared) -> None:
    """Approving a request the kill switch cancelled fails (exit 1) and never runs the write."""
    pol = policy()
    refunds = Refunds()
    waiter = Agent(pol, refunds, sqlite.store, tenant="acme", agent="bot")
    request = pending(sqlite.store)
    killswitch.enable(sqlite.store, mode="stop_all", actor="oncall")
    approvals.cancel_covered(sqlite.store, sqlite.store.kill_switches()[0])
    assert waiter.done().stop_reason == "kill_switch"
    out = cli("approvals", "approve", request.id, "--as", "alice", "--db", sqlite.url)
    assert out.exit_code == 1 and "cancelled" in out.output
    assert refunds.sent == []


# -- approvals x idempotency -------------------------------------------------------------------
def test_a_key_done_by_an_approved_run_is_replayed_to_an_unapproved_one_without_asking(
    shared: Shared,
) -> None:
    """Two runs race one key: one approved in-process runs it; the other, waiting in the queue,
    replays the outcome once approved; a third run replays it without filing any request."""
    pol = policy()
    refunds = Refunds()
    queued = Agent(pol, refunds, shared.store, tenant="acme", agent="bot")
    request = pending(shared.store)
    fast = Agent(pol, refunds, shared.store, tenant="acme", agent="bot", approver=lambda r: True)
    assert fast.done().stop_reason == "ok"
    approvals.approve(shared.store, request.id, approver="alice")
    assert queued.done().stop_reason == "ok"
    late = Agent(pol, refunds, shared.store, tenant="acme", agent="bot")
    assert late.done().stop_reason == "ok"
    assert refunds.sent == ["o-1"]
    assert len(shared.store.list_approvals(status=None)) == 1  # the late run asked nobody


def test_two_threads_with_approval_racing_one_key_execute_it_once(sqlite: Shared) -> None:
    """Eight runs approved in-process race one order: it is sent once, the rest replay it."""
    pol = policy()
    refunds = Refunds()
    gate = threading.Barrier(8)

    def approver(req: Any) -> bool:
        gate.wait(10)
        return True

    agents = [Agent(pol, refunds, sqlite.store, tenant="acme", approver=approver) for _ in range(8)]
    results = [a.done(30) for a in agents]
    assert refunds.sent == ["o-1"]
    assert {r.stop_reason for r in results} <= {"ok", "tool_error"}
    assert sum(r.stop_reason == "ok" for r in results) >= 1


# -- observe mode x idempotency ----------------------------------------------------------------
@pytest.mark.parametrize("mode", [{"approvals": "observe"}, "observe"])
def test_observe_mode_never_observes_idempotency(sqlite: Shared, mode: Any) -> None:
    """In observe mode a write still runs at most once per key, and a key reused with other
    arguments is still refused (idempotency is never observe-only)."""
    pol = policy(mode=mode)
    refunds = Refunds()
    approve = {} if mode != "observe" else {"approver": lambda r: True}
    for _ in range(3):
        with corral.Run(pol, tools=refunds.tools, store=sqlite.store, **approve) as run:
            assert run.call(WRITE, {"order": "o-1"}) == "sent o-1"
    assert refunds.sent == ["o-1"]
    with (
        corral.Run(pol, tools=refunds.tools, store=sqlite.store, **approve) as run,
        pytest.raises(corral.ToolRejected),
    ):
        run.call(WRITE, {"order": "o-1", "amount": 500})
    assert refunds.sent == ["o-1"]


# -- leases x rolling windows ------------------------------------------------------------------
def test_a_dead_holders_rolling_hold_is_reclaimed_from_its_own_sub_bucket() -> None:
    """A lapsed hold in a rolling scope is refunded from the bucket it was charged to: a later
    live hold in another bucket keeps counting, also after the first bucket ages out."""
    idle = Renewer(interval=1e6)
    store = MemoryStore(grant_lease=1.0, renewer=idle)
    pol = policy({"per": "tenant", "window": "1h", "max_usd": 2.00, "rolling": True})
    t0 = 3600.0 * 500_000 + 1.0
    charge = Charge(tool_calls=1, usd=Decimal("0.70"), tool=WRITE)
    first = store.reserve(windows.scoped(pol, charge, tenant="acme", agent=None, now=t0), now=t0)
    assert isinstance(first, str)
    t1 = t0 + 300.0  # five sub-buckets later
    held = windows.scoped(pol, charge, tenant="acme", agent=None, now=t1)
    second = store.reserve(held, now=t1)  # reserve reclaims the lapsed first hold
    assert isinstance(second, str)
    scope = held[0].scope
    assert store.scope_usage(scope) == (1, Decimal("0.70"))  # scopes count calls too
    later = t0 + 3600.0 + 61.0  # the first bucket has left the window, the second has not
    store.renew_grants(later - 0.5)
    assert store.reclaim(later) == 0
    third = store.reserve(
        windows.scoped(pol, charge, tenant="acme", agent=None, now=later), now=later
    )
    assert isinstance(third, str)
    assert store.scope_usage(scope) == (2, Decimal("1.40"))
    store.settle(first, windows.settled(held, charge))  # late: it may have happened after all
    store.settle(second, windows.settled(held, charge))
    store.settle(third, windows.settled(held, charge))
    assert store.scope_usage(scope)[1] >= Decimal("1.40")


_ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle", "reclaim", "renew"]),
        st.integers(min_value=0, max_value=90),  # seconds that pass first
        st.integers(min_value=0, max_value=9),  # which grant / how much of it is spent
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_ops, st.booleans())
def test_interleaved_reserve_settle_reclaim_renew_keep_the_scope_within_bounds(
    ops: list[tuple[str, int, int]], rolling: bool
) -> None:
    """Any interleaving of reserve, settle (at most what was held), reclaim and renew: the
    scope never goes negative, never passes the cap but by what was settled after a reclaim,
    and once everything is settled it holds exactly what was settled."""
    idle = Renewer(interval=1e6)
    store = MemoryStore(grant_lease=20.0, renewer=idle)
    cap = Decimal("3.00")
    pol = policy({"per": "tenant", "window": "1d", "max_usd": cap, "rolling": rolling})
    now = 86400.0 * 20_000 + 7.0  # 30 steps of at most 90 s stay inside one day
    open_grants: list[tuple[str, list[ScopedCharge], Decimal, float]] = []
    settled_total = Decimal(0)
    late = Decimal(0)
    seen_now = now
    scope = ""
    for op, dt, pick in ops:
        now += dt
        if op == "reserve":
            usd = Decimal("0.70") + Decimal(pick) / 10
            held = windows.scoped(pol, Charge(usd=usd, tool=READ), tenant="t", agent=None, now=now)
            scope = held[0].scope
            grant = store.reserve(held, now=now)
            seen_now = max(seen_now, now)
            if isinstance(grant, str):
                open_grants.append((grant, held, usd, now + 20.0))
        elif op == "settle" and open_grants:
            grant, held, usd, lease_until = open_grants.pop(pick % len(open_grants))
            spent = (usd * Decimal(pick) / 9).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
            store.settle(grant, windows.settled(held, Charge(usd=spent, tool=READ)))
            settled_total += spent
            if lease_until < seen_now:  # it may have been reclaimed: added on top
                late += spent
        elif op == "reclaim":
            store.reclaim(now)
            seen_now = max(seen_now, now)
        elif op == "renew":
            store.renew_grants(now)
            open_grants = [
                (g, h, u, max(lu, now + 20.0) if lu >= seen_now else lu)
                for g, h, u, lu in open_grants
            ]
        if scope:
            usd_now = store.scope_usage(scope)[1]
            assert usd_now >= 0
            assert usd_now <= cap + late
    for grant, held, usd, _ in open_grants:
        store.settle(grant, windows.settled(held, Charge(usd=usd, tool=READ)))
        settled_total += usd
    if scope:
        assert store.scope_usage(scope)[1] == settled_total


# -- bad input through the CLI -----------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["approvals", "approve", ""],
        ["approvals", "approve", "apr_\u00e9\u4e2d\u0000x"],
        ["approvals", "deny", "x" * 10_000, "--reason", "r" * 100_000],
        ["approvals", "approve", "apr_1", "--tenant", "../x"],
        ["approvals", "show", ""],
        ["approvals", "list", "--status", "\u00fcber"],
        ["idempotency", "resolve", "", "--outcome", "done"],
        ["idempotency", "resolve", "k" * 5000, "--tenant", "../x", "--outcome", "not_executed"],
        ["kill", "enable", "--tenant", "", "--mode", "stop_all"],
        ["kill", "enable", "--tenant", "../x", "--mode", "nonsense"],
        ["kill", "disable", "--run", "\u202e"],
        ["kill", "enable", "--as", "   "],
    ],
)
def test_malformed_cli_arguments_fail_in_one_line_without_a_traceback(
    sqlite: Shared, args: list[str]
) -> None:
    """Empty ids, unicode, control characters, huge reasons and a tenant of ``../x``: exit 1 or
    2 with one short line on stderr, never a traceback, and no state changed."""
    before = (sqlite.store.kill_switches(), sqlite.store.list_approvals(status=None))
    out = CliRunner().invoke(app, [*args, "--db", sqlite.url])
    assert out.exit_code in (1, 2), out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    assert "Traceback" not in out.output
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert errors and len(errors) <= 6, out.stderr
    assert len(out.stderr) < 2000, out.stderr[:300]
    assert (sqlite.store.kill_switches(), sqlite.store.list_approvals(status=None)) == before


@pytest.mark.parametrize("group", ["approvals", "idempotency"])
def test_a_listing_for_a_hostile_tenant_is_empty_not_an_error(sqlite: Shared, group: str) -> None:
    """``list --tenant ../x`` names no tenant that exists: an empty listing, exit 0."""
    out = CliRunner().invoke(app, [group, "list", "--tenant", "../x", "--json", "--db", sqlite.url])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)
    assert listed["approvals" if group == "approvals" else "claims"] == []


# -- a process killed around an approved write -----------------------------------------------
PAY = "pay.send"


def pay_policy(timeout: float = 30) -> corral.Policy:
    """pay.send needs approval; its key is the order, across runs."""
    return corral.Policy.from_dict(
        {
            "tools": {"allow": [PAY]},
            "writes": {"require_approval": True, "approval_timeout_seconds": timeout},
        }
    )


DYING = """
import sys
sys.path.insert(0, sys.argv[1])
import corral
from corral.stores import open_store
from crash import DyingStore, pay_tool, quick_leases
from pathlib import Path

url, path, order, point, hook = sys.argv[2:7]
quick = quick_leases(1.0, every=0.2)  # the claim it leaves lapses quickly
policy = corral.Policy.from_dict({"tools": {"allow": ["pay.send"]},
    "writes": {"require_approval": True, "approval_timeout_seconds": 30}})
tool = pay_tool(Path(path), point=point, reconcile=hook == "1")
with corral.Run(policy, tools=[tool], store=DyingStore(open_store(url), point),
                tenant="acme", services=quick) as run:
    run.call("pay.send", {"order": order})
"""


def approved_pay_that_dies(
    shared: Shared, path: Path, order: str, point: str, *, hook: bool = True
) -> Any:
    """Pay ``order`` in another process through an approval given from this one, SIGKILLed
    at ``point``; returns the approval it used."""
    here = str(Path(__file__).parent)
    args = [sys.executable, "-c", DYING, here, shared.url, str(path), order, point, str(int(hook))]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = pending(shared.store, timeout=30)
        approvals.approve(shared.store, first.id, approver="alice")
        _, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == -9, err
    return first


@pytest.mark.parametrize("point", ["before_claim", "after_claim", "after_tool", "before_outcome"])
def test_an_approved_write_killed_around_its_claim_never_runs_twice(
    shared: Shared, tmp_path: Path, short_leases: corral.Services, point: str
) -> None:
    """SIGKILL after the approval is consumed, before or after the claim, or after the side
    effect: resuming the run by id never pays twice, settles an unknown claim with the tool's
    reconcile hook, and the audit chain verifies."""
    path = tmp_path / "effects"
    first = approved_pay_that_dies(shared, path, "o-7", point)
    used = shared.store.get_approval(first.id)
    assert used is not None and used.status == "used"
    time.sleep(1.2)  # the dead process's claim lease lapses: its outcome is unknown
    tool = pay_tool(path, reconcile=True)
    resumed: list[corral.RunResult] = []

    def resume() -> None:
        with corral.Run(
            pay_policy(),
            tools=[tool],
            store=shared.store,
            tenant="acme",
            run_id=first.run_id,
            services=short_leases,
        ) as run:
            run.call(PAY, {"order": "o-7"})
            run.finish("done")
        resumed.append(run.result)

    again = threading.Thread(target=resume, daemon=True)
    again.start()
    deadline = time.monotonic() + 15
    while again.is_alive() and time.monotonic() < deadline:
        for request in shared.store.list_approvals(status="pending"):
            approvals.approve(shared.store, request.id, approver="alice")
        time.sleep(0.02)
    again.join(1)
    assert resumed and resumed[0].stop_reason == "ok", resumed
    assert effects(path) == ["o-7"]
    verified(shared.store)


@pytest.mark.parametrize("point", ["after_tool", "before_outcome"])
def test_a_write_that_ran_before_its_process_died_needs_no_second_approval(
    sqlite: Shared, tmp_path: Path, short_leases: corral.Services, point: str
) -> None:
    """The side effect happened, the outcome was not stored: the resumed run settles the
    unknown claim through the tool's reconcile hook before asking anyone again."""
    path = tmp_path / "effects"
    first = approved_pay_that_dies(sqlite, path, "o-8", point)
    assert effects(path) == ["o-8"]
    time.sleep(1.2)
    tool = pay_tool(path, reconcile=True)
    with corral.Run(
        pay_policy(timeout=1),
        tools=[tool],
        store=sqlite.store,
        tenant="acme",
        run_id=first.run_id,
        services=short_leases,
    ) as run:
        assert run.call(PAY, {"order": "o-8"}) == "paid o-8"
    assert run.result.stop_reason == "ok"
    assert [a.id for a in sqlite.store.list_approvals(status=None)] == [first.id]
    assert effects(path) == ["o-8"]


def test_an_unknown_outcome_without_a_hook_stops_before_anyone_is_asked(
    sqlite: Shared, tmp_path: Path, short_leases: corral.Services
) -> None:
    """A dead process left a write's outcome unknown and the tool has no reconcile hook: the
    resumed run stops ``outcome_unknown`` at once instead of asking a human to approve a write
    it will then refuse; after ``corral idempotency resolve`` it replays without asking."""
    path = tmp_path / "effects"
    approved_pay_that_dies(sqlite, path, "o-9", "before_outcome", hook=False)
    assert effects(path) == ["o-9"]
    time.sleep(1.2)
    with corral.Run(
        pay_policy(),
        tools=[pay_tool(path)],
        store=sqlite.store,
        tenant="acme",
        services=short_leases,
    ) as run:
        run.call(PAY, {"order": "o-9"})
    assert run.result.stop is not None and run.result.stop.why == "outcome_unknown"
    assert sqlite.store.list_approvals(status="pending") == []
    key = sqlite.store.list_claims(now=time.time(), status="unknown")[0].key
    out = cli(
        "idempotency", "resolve", key, "--tenant", "acme", "--outcome", "succeeded",
        "--output", '"paid o-9"', "--db", sqlite.url,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    with corral.Run(
        pay_policy(),
        tools=[pay_tool(path)],
        store=sqlite.store,
        tenant="acme",
        services=short_leases,
    ) as run:
        assert run.call(PAY, {"order": "o-9"}) == "paid o-9"
    assert effects(path) == ["o-9"]
    assert len(sqlite.store.list_approvals(status=None)) == 1


# -- stop_all x a write in flight x windows x breaker -----------------------------------------
def test_stop_all_on_an_async_write_in_flight_settles_its_hold_and_spares_the_breaker(
    shared: Shared,
) -> None:
    """stop_all cancels an async write holding a claimed key and a rolling tenant hold: the key
    becomes unknown (never re-run), the hold is settled as spent (nothing left to renew or
    reclaim), and the cancellations do not open the tool's breaker."""
    pol = policy(
        {"per": "tenant", "window": "1h", "max_usd": 10, "rolling": True},
        degrade={"min_calls": 2, "failure_rate": 0.5},
    )
    started = threading.Event()
    runs: list[str] = []

    async def send(order: str) -> str:
        runs.append(order)
        started.set()
        await asyncio.sleep(30)
        return "sent"

    tool = corral.tool(send, name=WRITE, effect="write", cost_usd="0.70", timeout=60)

    async def one(order: str) -> corral.RunResult:
        async with corral.AsyncRun(
            pol, tools=[tool], store=shared.store, tenant="acme", approver=lambda r: True
        ) as run:
            await run.call(WRITE, {"order": order}, idempotency_key=order)
        return run.result

    def flip() -> None:
        assert started.wait(10)  # cleared before this thread starts
        killswitch.enable(shared.store, mode="stop_all", actor="oncall")

    results = []
    for order in ("o-1", "o-2", "o-3"):
        started.clear()
        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        results.append(asyncio.run(one(order)))
        flipper.join(10)
        killswitch.disable(shared.store, actor="oncall")
        time.sleep(1.1)  # every process sees the switch off within 1 s
    assert [r.stop_reason for r in results] == ["kill_switch"] * 3
    unknown = shared.store.list_claims(now=time.time(), status="unknown", tenant="acme")
    assert sorted(c.key for c in unknown) == [f"caller:{WRITE}:o-{i}" for i in (1, 2, 3)]
    scope = tenant_scope(pol)
    assert shared.store.scope_usage(scope) == (3, Decimal("2.10"))  # scopes count calls too
    assert shared.store.reclaim(time.time() + 7200) == 0
    assert shared.store.scope_usage(scope) == (3, Decimal("2.10"))
    assert shared.store.breaker(WRITE, now=time.time()).state == "closed"
    again = asyncio.run(one("o-1"))
    assert again.stop is not None and again.stop.why == "outcome_unknown"
    assert runs == ["o-1", "o-2", "o-3"]


# -- credentials across tenants and threads ----------------------------------------------------
class TenantSecrets:
    """One provider object serving every tenant: ``secret-<tenant>``, slowly."""

    def check(self, tenant: str | None) -> None:
        if tenant is None:
            raise corral.ConfigError("a tenant is needed")

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        time.sleep(0.001)
        return {"api_key": f"secret-{tenant}-0123456789"}


def test_one_provider_shared_by_tenants_in_threads_never_crosses_secrets(
    sqlite: Shared,
) -> None:
    """Eight tenants' runs share one provider object concurrently: each tool call sees only its
    own tenant's secret; each run's output and audit trail scrub its own secret; a secret one
    run registered is not part of another run's redactor (nothing is shared between runs)."""
    provider = TenantSecrets()
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()
    tenants = [f"t{i}" for i in range(8)]

    def echo(q: str, ctx: corral.ToolContext) -> str:
        with lock:
            seen.setdefault(ctx.tenant or "-", set()).add(ctx.credentials["api_key"])
        return f"mine={ctx.credentials['api_key']} other=secret-{q}-0123456789"

    tool = corral.tool(echo, name="kb.read", effect="read")
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": 50, "max_steps": 50},
            "loops": {"repeats": 1000, "window": 1000},
        }
    )
    outputs: dict[str, list[str]] = {}
    ids: dict[str, str] = {}

    def work(tenant: str, other: str) -> None:
        with corral.Run(
            pol, tools=[tool], store=sqlite.store, tenant=tenant, credentials=provider
        ) as run:
            outputs[tenant] = [str(run.call("kb.read", {"q": other})) for _ in range(10)]
            run.finish("done")
        ids[tenant] = run.id

    threads = [
        threading.Thread(target=work, args=(t, tenants[(i + 1) % 8])) for i, t in enumerate(tenants)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {t: {f"secret-{t}-0123456789"} for t in tenants}
    for i, tenant in enumerate(tenants):
        other = tenants[(i + 1) % 8]
        mine = f"secret-{tenant}-0123456789"
        assert all(mine not in out and "[REDACTED]" in out for out in outputs[tenant])
        # the other tenant's value was never this run's secret: its redactor does not know it
        assert all(f"secret-{other}-0123456789" in out for out in outputs[tenant])
        trail = json.dumps([e.data for e in sqlite.store.events(ids[tenant])])
        assert mine not in trail


# -- hostile approval arguments ----------------------------------------------------------------
def test_hostile_approval_arguments_are_shown_redacted_and_bounded(sqlite: Shared) -> None:
    """A write's arguments that are huge, deeply nested and secret-looking are filed redacted
    (the policy's redaction keys and the run's secrets); ``corral approvals show`` prints them
    without the secrets and cuts long strings; its --json form (whole, for scripts) parses."""
    pol = policy()
    secret = "sk-live-abcdefghijklmnop0123"

    def send(order: str, note: str = "", extra: dict[str, Any] | None = None) -> str:
        return "sent"

    tool = corral.tool(send, name=WRITE, effect="write")
    nested: dict[str, Any] = {"password": "hunter2"}
    for _ in range(40):
        nested = {"n": nested, "token": secret}
    args = {"order": "o-1", "note": ("x" * 200_000) + secret, "extra": nested}

    def work() -> None:
        with corral.Run(
            pol,
            tools=[tool],
            store=sqlite.store,
            tenant="acme",
            credentials={WRITE: {"api_key": secret}},
        ) as run:
            run.call(WRITE, args)

    waiter = threading.Thread(target=work, daemon=True)
    waiter.start()
    request = pending(sqlite.store)
    shown = cli("approvals", "show", request.id, "--db", sqlite.url)
    as_json = cli("approvals", "show", request.id, "--json", "--db", sqlite.url)
    approvals.deny(sqlite.store, request.id, approver="alice")
    waiter.join(10)
    assert shown.exit_code == 0 and as_json.exit_code == 0
    for text in (shown.stdout, as_json.stdout):
        assert secret not in text and "hunter2" not in text
    json.loads(as_json.stdout)
    assert len(shown.stdout) < 100_000, len(shown.stdout)


# -- a forked process and the tool pool --------------------------------------------------------
def _child_status(pid: int, timeout: float) -> int:
    """The exit code of child ``pid`` (killed, and -9 reported, if it outlives ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9


def test_a_process_forked_after_tools_ran_can_still_run_sync_tools_in_threads() -> None:
    """A child forked after the parent ran sync tools off its main thread runs them too."""
    tool = corral.tool(lambda q: q, name="kb.read", effect="read", timeout=2)
    pol = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})

    def call_in_thread() -> str | None:
        out: list[Any] = []

        def go() -> None:
            with corral.Run(pol, tools=[tool], store=MemoryStore()) as run:
                out.append(run.call("kb.read", {"q": "x"}))
            out.append(run.result.stop_reason)

        worker = threading.Thread(target=go)
        worker.start()
        worker.join(10)
        return out[-1] if out else None

    assert call_in_thread() == "ok"  # the parent's pool now has an idle worker
    pid = os.fork()
    if pid == 0:  # the child: never return into the test runner
        os._exit(0 if call_in_thread() == "ok" else 3)
    assert _child_status(pid, 20) == 0


# -- degrade x approvals -----------------------------------------------------------------------
def test_a_breaker_that_opens_during_an_approval_wait_refuses_the_approved_write(
    sqlite: Shared,
) -> None:
    """The tool's breaker opens (shared through the store) while a write waits for approval:
    once approved, the write is refused as degraded instead of hitting the failing vendor."""
    from corral.stores.base import BreakerState

    pol = policy(degrade={"on_degraded": "stop"})
    refunds = Refunds()
    waiter = Agent(pol, refunds, sqlite.store, tenant="acme", agent="bot")
    request = pending(sqlite.store)
    sqlite.store.set_breaker(WRITE, BreakerState(state="open", until=time.time() + 60))
    approvals.approve(sqlite.store, request.id, approver="alice")
    result = waiter.done()
    assert refunds.sent == []
    assert result.stop_reason == "dependency_degraded"
