"""A store that fails, at any call a run makes, with any exception, once or for ever:
every face of a run returns a result with a stop reason from the closed list (never an
escaping exception), a failed write never ends ``ok``, and what the store allows is
recorded. On the in-memory, SQLite and PostgreSQL stores, through
:class:`corral.testing.FaultyStore`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.controls import approvals
from corral.stops import STOP_REASONS
from corral.stores.base import BreakerState, Store
from corral.stores.sqlite import SQLiteStore
from corral.testing import FaultyStore, ManualClock, MemoryStore, ScriptedModel, call, final

sys.path.insert(0, str(Path(__file__).parent / "stores"))
from pg import fresh_store, require_postgres

#: The store calls a run makes (opening, acting, settling, ending).
METHODS = (
    "create_run",
    "get_run",
    "events",
    "update_run",
    "append_events",
    "kill_switches",
    "breaker",
    "set_breaker",
    "degrade_add",
    "degrade_retry",
    "degrade_reset",
    "reserve",
    "settle",
    "lookup_claim",
    "claim",
    "complete",
    "release",
    "renew_claim",
    "heartbeat",
)
#: Writes of what the run did: when one fails the run can never end ``ok``.
RECORDING = {"create_run", "update_run", "append_events", "reserve", "settle", "claim", "complete"}
ERRORS: tuple[type[BaseException], ...] = (
    corral.StoreError,
    KeyError,
    sqlite3.OperationalError,
    OSError,
    RuntimeError,
    ValueError,
    TypeError,
)


@corral.tool(name="kb.read", effect="read")
def kb(q: str = "") -> str:
    return "fact " + q


@corral.tool(name="crm.write", effect="write")
def crm(note: str = "") -> str:
    return "saved"


def flaky_read() -> corral.Tool:
    """A read that fails its first call and is retried once (breaker and retry budget)."""
    calls: list[str] = []

    @corral.tool(name="kb.read", effect="read", retries=1)
    def read(q: str = "") -> str:
        calls.append(q)
        if len(calls) == 1:
            raise ConnectionError("vendor down")
        return "fact " + q

    return read


@corral.tool(name="crm.write", effect="write")
def crm_skipped(note: str = "") -> str:
    """A write that says it did nothing: its idempotency key is released."""
    raise corral.NotExecuted("the CRM is read-only today")


POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["kb.read", "crm.write"]},
        "writes": {"require_approval": False},
        "limits": [{"per": "tenant", "window": "1d", "max_calls": 1000}],
    }
)


def model() -> ScriptedModel:
    return ScriptedModel(
        [call("kb.read", q="a"), call("crm.write", note="n"), call("kb.read", q="b"), final("done")]
    )


def by_run(store: Store, tools: list[Any], **kw: Any) -> corral.RunResult:
    return corral.run("t", model=model(), tools=tools, policy=POLICY, store=store, **kw)


def by_arun(store: Store, tools: list[Any], **kw: Any) -> corral.RunResult:
    coro = corral.arun("t", model=model(), tools=tools, policy=POLICY, store=store, **kw)
    return asyncio.run(coro)


def by_run_block(store: Store, tools: list[Any], **kw: Any) -> corral.RunResult:
    with corral.Run(POLICY, tools=tools, store=store, **kw) as run:
        run.step()
        run.call("kb.read", {"q": "a"})
        run.step()
        run.call("crm.write", {"note": "n"})
        run.finish("done")
    return run.result


def by_async_run_block(store: Store, tools: list[Any], **kw: Any) -> corral.RunResult:
    async def go() -> corral.RunResult:
        async with corral.AsyncRun(POLICY, tools=tools, store=store, **kw) as run:
            await run.step()
            await run.call("kb.read", {"q": "a"})
            await run.step()
            await run.call("crm.write", {"note": "n"})
            await run.finish("done")
        return run.result

    return asyncio.run(go())


FACES: dict[str, Callable[..., corral.RunResult]] = {
    "run": by_run,
    "arun": by_arun,
    "Run": by_run_block,
    "AsyncRun": by_async_run_block,
}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """One store of each backend for a whole property test (each example runs for a tenant
    and run ids of its own, so examples share no state)."""
    if request.param == "postgres":
        with fresh_store(require_postgres()) as pg:
            yield pg
        return
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    try:
        yield store
    finally:
        store.close()


def check(result: corral.RunResult, faulty: FaultyStore, inner: Store, times: int | None) -> None:
    """The result has a stop reason from the closed list; a failed write never ends ok; a
    store that recovered holds the run's end, or the result says it could not."""
    assert result.stop_reason in STOP_REASONS
    failed = {method for method, _ in faulty.failures}
    if failed & RECORDING:
        assert result.stop_reason != "ok", (failed, result)
    if result.stop_reason == "control_plane_unavailable":
        assert result.stop is not None and result.stop.message
    if times is not None and failed:
        stored = inner.get_run(result.run_id)
        recorded = stored is not None and stored.stop_reason == result.stop_reason
        assert recorded or "could not be recorded" in (result.error or ""), (failed, result)


def test_every_property_case_can_fail() -> None:
    """Each method the property test fails is one a run really calls, on some path."""
    store = FaultyStore(MemoryStore())
    by_run(store, [flaky_read(), crm], tenant="acme", run_id="run_seen")
    by_run(store, [kb, crm], tenant="acme", run_id="run_seen")  # resumed: get_run, events
    by_run(store, [kb, crm_skipped], tenant="acme")  # a released write: release
    lease_path = {"renew_claim", "heartbeat", "degrade_reset", "set_breaker"}
    assert set(METHODS) - lease_path <= set(store.calls)


#: Examples per backend: PostgreSQL round trips cost most.
EXAMPLES = {"memory": 80, "sqlite": 60, "postgres": 25}


def test_a_failing_store_never_lets_an_exception_out(backend: Store) -> None:
    """Any store call failing (the Nth, once, twice or for ever) with any exception, in any
    face of a run, fresh or resumed, with a failing tool retried or not, a write done or
    released (NotExecuted): a result with a closed-list stop reason, never ok when a write
    failed, and the run's end recorded where the store allows."""
    kind = type(backend).__name__.removesuffix("Store").lower()

    @settings(
        max_examples=EXAMPLES.get(kind, 25),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        method=st.sampled_from(METHODS),
        nth=st.integers(min_value=1, max_value=4),
        error=st.sampled_from(ERRORS),
        times=st.sampled_from([1, 2, None]),
        face=st.sampled_from(sorted(FACES)),
        resume=st.booleans(),
        flaky=st.booleans(),
        skipped=st.booleans(),
    )
    def case(
        method: str,
        nth: int,
        error: type[BaseException],
        times: int | None,
        face: str,
        resume: bool,
        flaky: bool,
        skipped: bool,
    ) -> None:
        tenant = "t_" + uuid.uuid4().hex[:8]
        run_id = "run_" + uuid.uuid4().hex[:16]
        for name in ("kb.read", "crm.write"):  # breakers are per tool, shared by examples
            backend.set_breaker(name, BreakerState())
            backend.degrade_reset(name)
        tools = [flaky_read() if flaky else kb, crm_skipped if skipped else crm]
        if resume:
            with corral.Run(POLICY, tools=[kb], store=backend, tenant=tenant, run_id=run_id) as r:
                r.call("kb.read", {"q": "first"})
        faulty = FaultyStore(backend).fail(method, nth=nth, times=times, error=error)
        clock = ManualClock()  # a retry's pause passes at once
        result = FACES[face](faulty, tools, tenant=tenant, run_id=run_id, clock=clock)
        faulty.heal()
        check(result, faulty, backend, times)

    case()


def test_a_store_failing_only_on_create_run_then_recovering() -> None:
    """The issue's example: create_run fails (KeyError) and the store recovers. The run
    returns control_plane_unavailable, where it raised KeyError, and its record is
    created when it ends."""
    inner = MemoryStore()
    store = FaultyStore(inner).fail("create_run", error=KeyError("run_x"))
    model = ScriptedModel([call("kb.read", q="a"), final("done")])
    result = corral.run("t", model=model, tools=[kb], policy=POLICY, store=store)
    assert result.stop_reason == "control_plane_unavailable"
    assert result.stop is not None and "KeyError" in result.stop.message
    assert model.requests == []  # nothing ran
    stored = inner.get_run(result.run_id)
    assert stored is not None and stored.stop_reason == "control_plane_unavailable"


@pytest.mark.parametrize("method", ["create_approval", "list_approvals", "get_approval"])
@pytest.mark.parametrize("error", [corral.StoreError, KeyError, OSError])
def test_a_failing_approval_queue_refuses_the_write(
    method: str, error: type[BaseException], tmp_path: Path
) -> None:
    """A write waiting on the store's approval queue, whose queue fails with any exception,
    is refused: control_plane_unavailable, and the write never runs."""
    ran: list[str] = []

    @corral.tool(name="crm.write", effect="write")
    def write(note: str = "") -> str:
        ran.append(note)
        return "saved"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["crm.write"]}, "writes": {"approval_timeout_seconds": 5}}
    )
    inner = SQLiteStore(tmp_path / "c.db")
    store = FaultyStore(inner).fail(method, times=None, error=error)
    try:
        with corral.Run(policy, tools=[write], store=store) as run:
            run.call("crm.write", {"note": "n"})
    finally:
        inner.close()
    assert run.result.stop_reason == "control_plane_unavailable"
    assert ran == []


def test_a_failing_approval_consumption_refuses_the_write(tmp_path: Path) -> None:
    """Approved from another thread, but the store fails when the run consumes the
    approval: refused, control_plane_unavailable, never run."""
    ran: list[str] = []

    @corral.tool(name="crm.write", effect="write")
    def write(note: str = "") -> str:
        ran.append(note)
        return "saved"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["crm.write"]}, "writes": {"approval_timeout_seconds": 5}}
    )
    inner = SQLiteStore(tmp_path / "c.db")
    done = threading.Event()

    def approver() -> None:
        while not done.is_set():
            for record in inner.list_approvals(status="pending"):
                approvals.approve(inner, record.id, approver="alice", reason="ok")
                return
            done.wait(0.01)

    helper = threading.Thread(target=approver)
    helper.start()
    store = FaultyStore(inner).fail("transition_approval", times=None, error=OSError)
    try:
        with corral.Run(policy, tools=[write], store=store) as run:
            run.call("crm.write", {"note": "n"})
    finally:
        done.set()
        helper.join()
        inner.close()
    assert run.result.stop_reason == "control_plane_unavailable"
    assert ran == []
