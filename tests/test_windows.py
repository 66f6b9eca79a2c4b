"""Window limits across runs: per tenant, agent, tool or fleet, with zero overshoot."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.stores.leases import Renewer
from corral.testing import MemoryStore, ScriptedModel, call, final, prices

sys.path.insert(0, str(Path(__file__).parent / "stores"))
from pg import drop_schema, fresh_store, new_schema, require_postgres

SPAWN = multiprocessing.get_context("spawn")
CAP = Decimal("50.00")


def browse_tool(cost: str = "0.70") -> corral.Tool:
    def browse(url: str) -> str:
        """Open a page."""
        return "page"

    return corral.tool(browse, name="browser.open", effect="read", cost_usd=cost)


def limited(*limits: dict[str, Any], **extra: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["browser.open"], "specs": {"browser.open": {"cache": False}}},
            "budgets": {"max_tool_calls": 1000, "max_steps": 1000},
            "loops": {"repeats": 1000, "window": 1000},
            "limits": list(limits),
            **extra,
        }
    )


def spend(
    policy: corral.Policy, store: Any, *, tenant: str = "acme", agent: str = "bot", calls: int = 100
) -> corral.RunResult:
    with corral.Run(policy, tools=[browse_tool()], store=store, tenant=tenant, agent=agent) as run:
        for i in range(calls):
            run.call("browser.open", {"url": f"https://x.example/{i}"})
    return run.result


def test_a_tenant_budget_spans_runs_and_names_its_scope() -> None:
    """Runs of one tenant share its daily USD cap; the stop says which scope and when it reopens."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 5.00})
    first = spend(policy, store, calls=3)
    second = spend(policy, store)
    assert first.stop_reason == "ok" and first.usage.usd == Decimal("2.10")
    assert second.stop_reason == "max_usd"
    assert str(second.stop) == "max_usd:tenant/1d (limit 5.00, would be 5.60)"
    assert second.usage.usd == Decimal("2.80")
    assert second.stop is not None and second.stop.retryable
    assert second.stop.retry_after is not None and 0 < second.stop.retry_after <= 86400


def test_another_tenant_has_its_own_budget() -> None:
    """One tenant's spend never uses another tenant's budget."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 1.40})
    assert spend(policy, store, tenant="acme").usage.usd == Decimal("1.40")
    assert spend(policy, store, tenant="globex").usage.usd == Decimal("1.40")


def test_a_tool_call_cap_counts_calls_of_that_tool_across_runs() -> None:
    """The incident's fix: browser calls per day stop at the cap, whichever run makes them."""
    store = MemoryStore()
    policy = limited({"per": "tool", "tool": "browser.open", "window": "1d", "max_calls": 5})
    results = [spend(policy, store, tenant=t, calls=3) for t in ("a", "b", "c")]
    assert [r.usage.tool_calls for r in results] == [3, 2, 0]
    assert str(results[2].stop) == "max_tool_calls:tool/1d (limit 5, would be 6)"


def test_agent_and_global_scopes_apply_together_all_or_nothing() -> None:
    """A refusal by one scope charges none of the others."""
    store = MemoryStore()
    policy = limited(
        {"per": "agent", "window": "1h", "max_calls": 2},
        {"per": "global", "window": "1d", "max_usd": 100},
    )
    result = spend(policy, store, calls=5)
    assert result.usage.tool_calls == 2
    scope = windows.scoped(
        policy,
        Charge(tool_calls=1, usd=Decimal("0.70"), tool="browser.open"),
        tenant="acme",
        agent="bot",
        now=time.time(),
    )[1].scope
    # The global scope counts the two calls made (it caps only USD, but counts both).
    assert store.scope_usage(scope) == (2, Decimal("1.40"))


def test_a_failed_attempt_is_charged_and_not_executed_is_refunded() -> None:
    """Window scopes settle like the run: errors cost their price, NotExecuted costs no USD."""
    store = MemoryStore()

    def flaky(url: str) -> str:
        """Fail."""
        if url.endswith("skip"):
            raise corral.NotExecuted("not started")
        raise ConnectionError("vendor down")

    tool = corral.tool(flaky, name="browser.open", effect="read", cost_usd="0.70")
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 10})
    with corral.Run(policy, tools=[tool], store=store, tenant="acme") as run:
        with pytest.raises(corral.ToolRejected):
            run.call("browser.open", {"url": "skip"})
        run.call("browser.open", {"url": "fail"})
    assert run.result.stop_reason == "tool_error"
    scope = windows.scoped(
        policy, Charge(usd=Decimal(1)), tenant="acme", agent=None, now=time.time()
    )[0].scope
    assert store.scope_usage(scope)[1] == Decimal("0.70")


def test_a_hold_never_reported_is_settled_at_what_it_held_when_the_run_ends() -> None:
    """An authorized call the caller never reports: at the run's end its shared hold is
    settled as spent (it may have happened), so nothing is left to renew or reclaim."""
    store = MemoryStore()
    tool = corral.tool(lambda url: url, name="browser.open", effect="read", cost_usd="0.70")
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 10})
    with corral.Run(policy, tools=[tool], store=store, tenant="acme") as run:
        run.authorize("browser.open", {"url": "https://x.example/"})  # executed, never reported
    scope = windows.scoped(
        policy, Charge(usd=Decimal(1)), tenant="acme", agent=None, now=time.time()
    )[0].scope
    assert store.scope_usage(scope)[1] == Decimal("0.70")
    assert store.reclaim(time.time() + 3600) == 0  # no grant left outstanding
    assert store.scope_usage(scope)[1] == Decimal("0.70")


def test_windows_are_utc_aligned_buckets() -> None:
    """A 1d window runs from UTC midnight to UTC midnight; the next day is a new scope."""
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 5})
    charge = Charge(usd=Decimal("1"))
    day = 86400 * 20_000
    a = windows.scoped(policy, charge, tenant="t", agent=None, now=day + 10)[0]
    b = windows.scoped(policy, charge, tenant="t", agent=None, now=day + 86399)[0]
    c = windows.scoped(policy, charge, tenant="t", agent=None, now=day + 86400)[0]
    assert a.scope == b.scope != c.scope
    assert a.window_ends == day + 86400


def test_model_spend_counts_toward_the_tenant_budget() -> None:
    """A priced model's calls are reserved against the tenant window too."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 0.01}, budgets={"max_steps": 100})
    model = ScriptedModel(
        [call("browser.open", url="u")], repeat_last=True, price=prices(1000, 1000)
    )
    result = corral.run(
        "t", model=model, tools=[browse_tool("0")], policy=policy, store=store, tenant="acme"
    )
    assert result.stop_reason == "max_usd"
    assert result.stop is not None and result.stop.detail in ("tenant/1d", "run")
    assert result.usage.usd <= Decimal("0.01")


# -- limits on one scope and window: usage counted once, every cap enforced ------------------
@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh store of each backend, closed afterwards."""
    if request.param == "postgres":
        with fresh_store(require_postgres()) as pg:
            yield pg
        return
    from corral.stores.sqlite import SQLiteStore

    store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "w.db")
    try:
        yield store
    finally:
        store.close()


def dime_calls(policy: corral.Policy, store: Any, calls: int = 15, **who: Any) -> corral.RunResult:
    """``calls`` calls at $0.10 each under ``policy``, as tenant acme unless told otherwise."""
    who.setdefault("tenant", "acme")
    with corral.Run(policy, tools=[browse_tool("0.10")], store=store, **who) as run:
        for i in range(calls):
            run.call("browser.open", {"url": f"https://x.example/{i}"})
    return run.result


def tenant_usage(policy: corral.Policy, store: Any, tenant: str = "acme") -> tuple[int, Decimal]:
    (scope,) = windows.scoped(
        policy, Charge(tool_calls=1, tool="browser.open"), tenant=tenant, agent=None,
        now=time.time(),
    )  # fmt: skip
    return store.scope_usage(scope.scope)


def test_a_usd_cap_and_a_calls_cap_on_one_tenant_day_are_both_enforced(any_store: Any) -> None:
    """Issue 10, break 1: {max_usd: 1} and {max_calls: 100} on tenant/1d let 15 calls at $0.10
    through; the USD cap now stops the 11th, on every backend, and the day counts each once."""
    policy = limited(
        {"per": "tenant", "window": "1d", "max_usd": 1},
        {"per": "tenant", "window": "1d", "max_calls": 100},
    )
    result = dime_calls(policy, any_store)
    assert result.stop_reason == "max_usd"
    assert str(result.stop) == "max_usd:tenant/1d (limit 1.00, would be 1.10)"
    assert (result.usage.tool_calls, result.usage.usd) == (10, Decimal("1.00"))
    assert tenant_usage(policy, any_store) == (10, Decimal("1.00"))


def test_two_calls_caps_on_one_tenant_day_enforce_the_tighter_once(any_store: Any) -> None:
    """Issue 10, break 1: max_calls 5 and 50 on tenant/1d stopped after 3 calls (counted
    twice); now after 5, on every backend."""
    policy = limited(
        {"per": "tenant", "window": "1d", "max_calls": 5},
        {"per": "tenant", "window": "1d", "max_calls": 50},
    )
    result = dime_calls(policy, any_store)
    assert str(result.stop) == "max_tool_calls:tenant/1d (limit 5, would be 6)"
    assert result.usage.tool_calls == 5
    assert tenant_usage(policy, any_store) == (5, Decimal("0.50"))


def test_policies_capping_one_tenant_differently_see_one_usage(any_store: Any) -> None:
    """A run under a USD-only cap and one under a calls-only cap on the same tenant day see
    each other's usage: every scope counts both calls and USD."""
    usd_cap = limited({"per": "tenant", "window": "1d", "max_usd": 1.00})
    calls_cap = limited({"per": "tenant", "window": "1d", "max_calls": 6})
    assert dime_calls(usd_cap, any_store, calls=4).stop_reason == "ok"
    second = dime_calls(calls_cap, any_store)
    assert str(second.stop) == "max_tool_calls:tenant/1d (limit 6, would be 7)"
    assert second.usage.tool_calls == 2
    third = dime_calls(usd_cap, any_store)
    assert str(third.stop) == "max_usd:tenant/1d (limit 1.00, would be 1.10)"
    assert third.usage.tool_calls == 4
    assert tenant_usage(usd_cap, any_store) == (10, Decimal("1.00"))


def test_a_window_written_two_ways_is_one_scope() -> None:
    """1d and 24h (and 60m and 1h) are one window length, so one scope: both caps apply to
    one usage, and the stop names it in its largest unit."""
    store = MemoryStore()
    policy = limited(
        {"per": "tenant", "window": "24h", "max_usd": 1.00},
        {"per": "tenant", "window": "1d", "max_calls": 100},
        {"per": "agent", "window": "60m", "max_calls": 8},
        {"per": "agent", "window": "1h", "max_usd": 5},
    )
    charge = Charge(tool_calls=1, usd=Decimal("0.10"), tool="browser.open")
    scopes = windows.scoped(policy, charge, tenant="acme", agent="bot", now=time.time())
    assert [s.scope.split("@")[0] for s in scopes] == ["tenant:acme/1d", "agent:bot/1h"]
    assert [(s.max_usd, s.max_calls) for s in scopes] == [
        (Decimal("1.00"), 100),
        (Decimal("5"), 8),
    ]
    result = dime_calls(policy, store, agent="bot")
    assert str(result.stop) == "max_tool_calls:agent/1h (limit 8, would be 9)"


def test_a_tenant_name_holding_a_slash_keeps_the_stop_label() -> None:
    """The stop names the window after the subject, whatever characters the subject holds."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 0.30})
    result = dime_calls(policy, store, tenant="acme/eu@1d")
    assert str(result.stop) == "max_usd:tenant/1d (limit 0.30, would be 0.40)"


def test_model_spend_counts_in_a_scope_that_caps_only_calls() -> None:
    """A scope with only a calls cap still counts the USD of priced model calls (its usage is
    the true usage, for any policy capping USD on the same scope)."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_calls": 100})
    model = ScriptedModel([call("browser.open", url="u"), call("browser.open", url="v")])
    model.price = prices(1000, 1000)
    model.script.append(final("done"))
    result = corral.run(
        "t", model=model, tools=[browse_tool("0.10")], policy=policy, store=store,
        tenant="acme", max_tokens=32,
    )  # fmt: skip
    assert result.stop_reason == "ok"
    calls, usd = tenant_usage(policy, store)
    assert calls == 2 and usd == result.usage.usd > Decimal("0.20")


# -- rolling windows -----------------------------------------------------------------------
def test_a_rolling_limit_names_itself_in_the_stop() -> None:
    """A rolling limit's stop says so, and reopens about one window after the spend."""
    store = MemoryStore()
    policy = limited({"per": "tenant", "window": "1d", "max_usd": 5.00, "rolling": True})
    result = spend(policy, store)
    assert result.usage.usd == Decimal("4.90")
    assert str(result.stop) == "max_usd:tenant/1d rolling (limit 5.00, would be 5.60)"
    assert result.stop is not None and result.stop.retryable
    assert result.stop.retry_after is not None
    assert 86400 <= result.stop.retry_after <= 86400 + 86400 / windows.BUCKETS
    assert "ages out" in result.stop.message


def test_rolling_must_be_a_boolean() -> None:
    """`rolling` is strictly true or false, and the error names the entry."""
    with pytest.raises(corral.PolicyError, match=r"limits\[0\]\.rolling: must be true or false"):
        limited({"per": "tenant", "window": "1d", "max_usd": 5, "rolling": "yes"})


def test_a_rolling_window_keeps_counting_past_the_utc_boundary() -> None:
    """Spend just before UTC midnight still counts just after it, unlike a calendar window."""
    day = 86400 * 20_000
    charge = Charge(usd=Decimal("4"))
    for rolling, expected in ((False, "granted"), (True, "refused")):
        store = MemoryStore()
        policy = limited({"per": "tenant", "window": "1d", "max_usd": 5, "rolling": rolling})
        before = windows.scoped(policy, charge, tenant="t", agent=None, now=day - 60)
        grant = store.reserve(before, now=day - 60)
        assert isinstance(grant, str)
        store.settle(grant, before)
        after = windows.scoped(policy, charge, tenant="t", agent=None, now=day + 60)
        outcome = store.reserve(after, now=day + 60)
        assert ("granted" if isinstance(outcome, str) else "refused") == expected


T0 = 1_700_000_000.0
CAP_CENTS = 500
spends = st.lists(
    st.tuples(st.floats(0, 600, allow_nan=False), st.integers(1, 200)), max_size=60
).map(sorted)


def _admit(policy: corral.Policy, events: list[tuple[float, int]]) -> list[tuple[float, int, bool]]:
    """Reserve and settle each (time, cents) in order; what each met."""
    store = MemoryStore()
    out = []
    for at, cents in events:
        now = T0 + at
        wanted = windows.scoped(
            policy, Charge(usd=Decimal(cents) / 100), tenant="t", agent=None, now=now
        )
        grant = store.reserve(wanted, now=now)
        if isinstance(grant, str):
            store.settle(grant, wanted)
        out.append((now, cents, isinstance(grant, str)))
    return out


@settings(max_examples=150, deadline=None)
@given(spends)
def test_a_rolling_window_never_admits_more_than_the_cap_in_any_span(
    events: list[tuple[float, int]],
) -> None:
    """Over any W-long span, admitted spend <= cap; a refusal means the last W + W/60 was full."""
    policy = limited({"per": "tenant", "window": "1m", "max_usd": 5.00, "rolling": True})
    seen = _admit(policy, events)
    admitted = [(t, c) for t, c, ok in seen if ok]
    for t, _ in admitted:  # the worst span ends at an admission
        assert sum(c for u, c in admitted if t - 60 <= u <= t) <= CAP_CENTS
    for t, cents, ok in seen:
        if not ok:  # conservative by at most one bucket (1 s here), never more
            counted = sum(c for u, c in admitted if t - 61 <= u <= t)
            assert counted + cents > CAP_CENTS


@settings(max_examples=100, deadline=None)
@given(spends.map(lambda events: [(at * 24, cents) for at, cents in events]))
def test_a_calendar_window_admits_up_to_the_cap_and_resets_at_the_utc_hour(
    events: list[tuple[float, int]],
) -> None:
    """Each UTC hour admits exactly what fits its cap; the next hour starts from zero."""
    policy = limited({"per": "tenant", "window": "1h", "max_usd": 5.00})
    used: dict[int, int] = {}
    for t, cents, ok in _admit(policy, events):
        hour = int(t // 3600)
        fits = used.get(hour, 0) + cents <= CAP_CENTS
        assert ok == fits
        if ok:
            used[hour] = used.get(hour, 0) + cents


# -- zero overshoot: 64 concurrent runs in 2 processes against one tenant budget ----------
def _runs_in_threads(store_factory: Any, threads: int, exact: bool, start: Any, out: Any) -> None:
    """Child: ``threads`` concurrent runs spending against tenant acme; send total USD."""
    store = store_factory()
    policy = limited(
        {"per": "tenant", "window": "1d", "max_usd": CAP},
        budgets={"max_tool_calls": 200, "max_steps": 200},
    )
    spent: list[Decimal] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        if exact:
            result = spend(policy, store, calls=200)
        else:
            model = ScriptedModel(
                [call("browser.open", url=f"u{i}")],
                repeat_last=True,
                price=prices(2000, 4000),
                name=f"m{i}",
            )
            result = corral.run(
                "t",
                model=model,
                tools=[browse_tool("0.35")],
                policy=policy,
                store=store,
                tenant="acme",
                max_tokens=64,
            )
        with lock:
            spent.append(result.usage.usd)

    start.wait()
    workers = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    store.close()
    out.send(str(sum(spent, Decimal(0))))


class _SQLite:
    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, **leases: Any) -> Any:
        from corral.stores.sqlite import SQLiteStore

        return SQLiteStore(self.path, **_leases(**leases))


class _Postgres:
    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema

    def __call__(self, **leases: Any) -> Any:
        from corral.stores.postgres import PostgresStore

        return PostgresStore(self.url, schema=self.schema, max_size=8, **_leases(**leases))


def _leases(*, lease: float | None = None, renew_every: float = 0.2) -> dict[str, Any]:
    """Store options for grants leased ``lease`` seconds, renewed every ``renew_every``."""
    if lease is None:
        return {}
    return {"grant_lease": lease, "renewer": Renewer(interval=renew_every)}


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory of the same durable store, for spawned processes."""
    if request.param == "sqlite":
        factory: Any = _SQLite(str(tmp_path / "budget.db"))
        factory().close()
        yield factory
        return
    url = require_postgres()
    schema = new_schema()
    factory = _Postgres(url, schema)
    factory().close()
    try:
        yield factory
    finally:
        drop_schema(url, schema)


def _race(factory: Any, *, exact: bool) -> Decimal:
    start = SPAWN.Barrier(2)
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(2)]
    procs = [
        SPAWN.Process(target=_runs_in_threads, args=(factory, 32, exact, start, send))
        for _, send in pipes
    ]
    for p in procs:
        p.start()
    try:
        totals = [Decimal(recv.recv()) for recv, _ in pipes]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    return sum(totals, Decimal(0))


@pytest.mark.slow
def test_exact_costs_end_between_cap_minus_one_action_and_the_cap(shared_store: Any) -> None:
    """64 runs in 2 processes, $0.70 a call, $50 cap: spend lands in [cap - 0.70, cap]."""
    total = _race(shared_store, exact=True)
    print(f"exact costs: spend {total} vs cap {CAP}")
    assert CAP - Decimal("0.70") <= total <= CAP


@pytest.mark.slow
def test_over_estimated_costs_never_pass_the_cap(shared_store: Any) -> None:
    """64 runs in 2 processes whose worst cases over-estimate (model calls): spend <= cap."""
    total = _race(shared_store, exact=False)
    print(f"over-estimated costs: spend {total} vs cap {CAP}")
    assert 0 < total <= CAP


# -- leases: a dead process's hold is reclaimed, a live one's is renewed ------------------
LEASE = 1.5
ONE_CALL = {"per": "tenant", "window": "1d", "max_usd": 1.00}  # one $0.70 call fits, not two


def _slow_call(factory: Any, seconds: float, started: Any, done: Any) -> None:
    """Child: one run of tenant acme whose only call is a $0.70 tool taking ``seconds``."""
    store = factory(lease=LEASE)

    def browse(url: str) -> str:
        """Open a slow page."""
        started.set()
        time.sleep(seconds)
        return "page"

    tool = corral.tool(browse, name="browser.open", effect="read", cost_usd="0.70")
    policy = limited(ONE_CALL)
    with corral.Run(policy, tools=[tool], store=store, tenant="acme") as run:
        run.call("browser.open", {"url": "https://slow.example"})
    store.close()
    done.set()


def _tenant_usage(store: Any) -> Decimal:
    scope = windows.scoped(
        limited(ONE_CALL), Charge(usd=Decimal(1)), tenant="acme", agent=None, now=time.time()
    )[0].scope
    return Decimal(store.scope_usage(scope)[1])


def _try_spend(store: Any) -> corral.RunResult:
    return spend(limited(ONE_CALL), store, calls=1)


@pytest.mark.slow
def test_a_killed_process_hold_is_reclaimed_after_its_lease(shared_store: Any) -> None:
    """SIGKILL mid slow tool: its hold blocks others until the lease lapses, then is refunded."""
    started, done = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=_slow_call, args=(shared_store, 600.0, started, done))
    child.start()
    store = shared_store(lease=LEASE)
    try:
        assert started.wait(60), "the child never started its call"
        assert _tenant_usage(store) == Decimal("0.70")  # held by the child
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL and not done.is_set()
        assert _try_spend(store).stop_reason == "max_usd"  # the lease has not lapsed yet
        time.sleep(LEASE + 1.1)  # the lease lapses; reserve reclaims at most once a second
        result = _try_spend(store)
        assert result.stop_reason == "ok" and result.usage.usd == Decimal("0.70")
        assert _tenant_usage(store) == Decimal("0.70")  # the new call only: the dead hold is gone
    finally:
        if child.is_alive():
            child.kill()
        store.close()


@pytest.mark.slow
def test_a_live_slow_call_keeps_its_hold_past_the_lease(shared_store: Any) -> None:
    """A call running for several leases keeps its hold (renewed): nobody else can spend it."""
    started, done = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=_slow_call, args=(shared_store, 3 * LEASE, started, done))
    child.start()
    store = shared_store(lease=LEASE)
    try:
        assert started.wait(60), "the child never started its call"
        attempts = 0
        while not done.is_set():
            assert _try_spend(store).stop_reason == "max_usd"
            attempts += 1
            time.sleep(0.25)
        child.join(30)
        assert child.exitcode == 0
        assert attempts >= 4  # tried well past one lease while the call ran
        assert _tenant_usage(store) == Decimal("0.70")  # the child's call, settled
        assert _try_spend(store).stop_reason == "max_usd"
    finally:
        if child.is_alive():
            child.kill()
        store.close()
