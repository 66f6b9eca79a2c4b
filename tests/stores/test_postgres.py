"""The PostgreSQL store beyond the shared contract: several processes, migrations, failures.

Runs against the server named by ``CORRAL_TEST_POSTGRES_URL`` (default: the local one);
skipped when it cannot be reached, failed instead under CI. See ``pg.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from pg import (
    claim_once,
    drop_schema,
    fresh_store,
    new_schema,
    require_postgres,
    reserve_until_refused,
)

from corral.exceptions import ConfigError, StoreError
from corral.stores.base import Event, KillSwitchState, Refusal, RunRecord, ScopedCharge

if TYPE_CHECKING:
    from corral.stores.postgres import PostgresStore


@pytest.fixture
def url() -> str:
    """The test server's URL (skip, or fail under CI, when it is unusable)."""
    return require_postgres()


@pytest.fixture
def store(url: str) -> Iterator[PostgresStore]:
    """A store in a schema of its own, dropped afterwards."""
    with fresh_store(url) as s:
        yield s


def _raw(url: str) -> Any:
    """A plain autocommit connection, outside any store (an operator, another process)."""
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def _spawn_all(target: Any, args_for: list[tuple[Any, ...]], timeout: float = 60.0) -> list[Any]:
    """Run ``target`` in one spawned process per args tuple, released together; their results."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(args_for))
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, results)) for a in args_for]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()
    assert all(p.exitcode == 0 for p in procs)
    return out


# -- zero overshoot across processes -----------------------------------------------------
@pytest.mark.parametrize(
    ("actual_usd", "label"),
    [(Decimal("0.70"), "exact cost"), (Decimal("0.25"), "declared cost over-estimates")],
)
def test_processes_and_threads_reserving_one_tenant_never_pass_the_cap(
    store: PostgresStore, url: str, actual_usd: Decimal, label: str
) -> None:
    """2 processes × 8 threads on one tenant cap: spend never passes it; exact costs fill it."""
    cap, cost, processes, threads = Decimal("100.00"), Decimal("0.70"), 2, 8
    charge = ScopedCharge(scope="tenant:acme/1d", calls=1, usd=cost, max_usd=cap)
    actual = ScopedCharge(scope="tenant:acme/1d", calls=1, usd=actual_usd)
    peak = [Decimal(0)]
    done = threading.Event()

    def watch() -> None:
        # Committed spend plus live holds, sampled while the processes race.
        while not done.is_set():
            peak[0] = max(peak[0], store.scope_usage("tenant:acme/1d")[1])
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert store.schema
        results = _spawn_all(
            reserve_until_refused,
            [(url, store.schema, threads, charge, actual)] * processes,
        )
    finally:
        done.set()
        watcher.join()
    grants = sum(r[0] for r in results)
    attempts = grants + sum(r[1] for r in results)
    seconds = max(r[2] for r in results)
    calls, spend = store.scope_usage("tenant:acme/1d")
    print(
        f"\nPostgreSQL, {label}: spend {spend} vs cap {cap} (peak held {peak[0]}); "
        f"{grants} grants by {processes} processes × {threads} threads in {seconds:.2f} s, "
        f"{attempts / seconds:.0f} reservations/s"
    )
    assert peak[0] <= cap and spend <= cap
    assert calls == grants == store.scope_usage("agent:bot/1d")[0]
    assert spend == grants * actual_usd
    if actual_usd == cost:
        assert cap - cost < spend <= cap and grants == int(cap // cost)


def test_exactly_one_of_many_processes_wins_an_idempotency_claim(
    store: PostgresStore, url: str
) -> None:
    """Of 3 processes × 4 threads claiming one key at once, exactly one claim is granted."""
    assert store.schema
    results = _spawn_all(claim_once, [(url, store.schema, 4)] * 3)
    statuses = [s for r in results for s in r]
    assert len(statuses) == 12
    assert statuses.count("claimed") == 1 and statuses.count("in_flight") == 11


# -- migrations ---------------------------------------------------------------------------
def test_migrations_are_versioned_and_applied_once(store: PostgresStore, url: str) -> None:
    """A new schema gets every shipped migration once; opening it again applies nothing."""
    from corral.stores.migrate import POSTGRES, load, migrate
    from corral.stores.postgres import PostgresStore

    shipped = load("postgres")
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    assert store.schema_version() == shipped[-1].version
    with PostgresStore(url, schema=store.schema) as again:
        assert again.schema_version() == shipped[-1].version
    with _raw(url) as conn:
        conn.execute(f"SET search_path = {store.schema}")
        rows = conn.execute("SELECT version, name FROM corral_schema_migrations ORDER BY 1")
        assert rows.fetchall() == [(m.version, m.name) for m in shipped]
        assert migrate(conn, POSTGRES) == []


def test_stores_opening_a_new_schema_at_once_migrate_it_once(url: str) -> None:
    """Six stores opened concurrently on one new schema all work; each migration ran once."""
    from corral.stores.migrate import load
    from corral.stores.postgres import PostgresStore

    schema = new_schema()
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []
    go = threading.Barrier(6)

    def open_one() -> None:
        go.wait()
        try:
            opened.append(PostgresStore(url, schema=schema))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=open_one) for _ in range(6)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == [] and len(opened) == 6
        with _raw(url) as conn:
            conn.execute(f"SET search_path = {schema}")
            count = conn.execute("SELECT count(*) FROM corral_schema_migrations").fetchone()
        assert count == (len(load("postgres")),)
    finally:
        for s in opened:
            s.close()
        drop_schema(url, schema)


def test_a_schema_newer_than_the_code_is_refused(store: PostgresStore, url: str) -> None:
    """Opening a database migrated by a newer corral is a clear error, and writes nothing."""
    from corral.stores.postgres import PostgresStore

    with _raw(url) as conn:
        conn.execute(f"SET search_path = {store.schema}")
        conn.execute(
            "INSERT INTO corral_schema_migrations (version, name, applied_at) "
            "VALUES (999, 'future', 0)"
        )
    with pytest.raises(ConfigError, match="newer"):
        PostgresStore(url, schema=store.schema)


# -- failing closed, not hanging ------------------------------------------------------------
def test_an_unusable_server_skips_these_tests_but_fails_them_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without CI an unreachable server skips the PostgreSQL tests; with CI set it fails them."""
    nowhere = "postgresql://postgres@127.0.0.1:9/test"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not usable"):
        require_postgres(nowhere)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="must run"):
        require_postgres(nowhere)


def test_an_unreachable_server_is_a_store_error_within_the_timeout(url: str) -> None:
    """Nothing listening: opening the store raises StoreError after the connect timeout."""
    from corral.stores.postgres import PostgresStore

    began = time.monotonic()
    with pytest.raises(StoreError, match="unavailable"):
        PostgresStore("postgresql://postgres@127.0.0.1:9/test", connect_timeout=1.0)
    assert time.monotonic() - began < 5.0


def test_an_exhausted_pool_and_a_stuck_statement_fail_closed(url: str) -> None:
    """With the only connection stuck on a lock, calls raise StoreError within their timeouts."""
    with (
        fresh_store(url, max_size=1, pool_timeout=0.3, statement_timeout=1.0) as store,
        _raw(url) as blocker,
    ):
        scope = [ScopedCharge(scope="tenant:acme/1d", calls=1)]
        store.settle(str(store.reserve(scope, now=0.0)), scope)
        blocker.execute("BEGIN")
        blocker.execute(f"SET LOCAL search_path = {store.schema}")
        blocker.execute("SELECT * FROM corral_scopes FOR UPDATE")  # another process holds the row
        stuck: list[BaseException] = []

        def reserve() -> None:
            try:
                store.reserve(scope, now=0.0)
            except StoreError as exc:
                stuck.append(exc)

        worker = threading.Thread(target=reserve)
        worker.start()
        time.sleep(0.2)
        began = time.monotonic()
        with pytest.raises(StoreError, match=r"no connection within 0\.3 s"):
            store.kill_switches()
        assert time.monotonic() - began < 1.0
        worker.join(timeout=5)
        assert len(stuck) == 1 and "statement timeout" in str(stuck[0])
        blocker.execute("ROLLBACK")
        assert isinstance(store.reserve(scope, now=0.0), str)


def test_dropped_connections_fail_closed_for_writes_and_recover(url: str) -> None:
    """After the server drops the pool's connections, reads retry; a reservation refuses once."""
    app = f"corral_test_{uuid.uuid4().hex[:8]}"
    with fresh_store(f"{url}?application_name={app}", max_size=1) as store, _raw(url) as admin:

        def drop_all() -> None:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (app,),
            )
            time.sleep(0.1)

        store.kill_switches()
        drop_all()
        assert store.kill_switches() == []  # a read is safe to send again on a new connection
        drop_all()
        charge = [ScopedCharge(scope="t", calls=1, max_calls=10)]
        with pytest.raises(StoreError):
            store.reserve(charge, now=0.0)  # might have committed: never sent twice
        assert isinstance(store.reserve(charge, now=0.0), str)


def _backend_pid(store: PostgresStore) -> int:
    """The server process behind one of the store's pooled connections."""
    row = store._call(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone())
    assert row is not None
    return int(row[0])


def _in_forked_child(store: PostgresStore, results: Any) -> None:
    """Use a store inherited through fork; report what it saw and which session served it."""
    results.put(([s.scope for s in store.kill_switches()], _backend_pid(store)))
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_opens_its_own_connections(url: str) -> None:
    """A child forked with the store open uses new sessions; the parent's keep working."""
    with fresh_store(url, max_size=1) as store:
        store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
        parent_session = _backend_pid(store)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_in_forked_child, args=(store, results))
        child.start()
        seen, child_session = results.get(timeout=30)
        child.join(timeout=10)
        results.close()
        results.join_thread()
        assert child.exitcode == 0 and seen == ["global"]
        assert child_session != parent_session
        assert _backend_pid(store) == parent_session and len(store.kill_switches()) == 1


def test_a_closed_store_refuses_every_call(url: str) -> None:
    """After close, calls raise StoreError (callers fail closed)."""
    with fresh_store(url) as store:
        assert not store.closed
        store.close()
        assert store.closed
        with pytest.raises(StoreError):
            store.kill_switches()


def test_a_postgresql_url_opens_one_shared_store_per_process(url: str) -> None:
    """``open_store("postgresql://...")`` gives a PostgresStore, the same one for the same URL."""
    from corral.stores import open_store
    from corral.stores.postgres import PostgresStore

    schema = new_schema()
    try:
        store = open_store(f"{url}?schema={schema}")
        try:
            assert isinstance(store, PostgresStore) and store.schema == schema
            assert open_store(f"{url}?schema={schema}") is store
        finally:
            store.close()
        reopened = open_store(f"{url}?schema={schema}")
        assert reopened is not store
        reopened.close()
    finally:
        drop_schema(url, schema)


# -- values and isolation -------------------------------------------------------------------
def test_money_is_exact(store: PostgresStore) -> None:
    """USD amounts add up as decimals: ten 0.1 charges are exactly 1.0, tiny amounts survive."""
    for _ in range(10):
        store.reserve([ScopedCharge(scope="t", usd=Decimal("0.1"))], now=0.0)
    store.reserve([ScopedCharge(scope="t", usd=Decimal("0.000000000001"))], now=0.0)
    assert store.scope_usage("t") == (0, Decimal("1.000000000001"))
    refused = store.reserve(
        [ScopedCharge(scope="t", usd=Decimal("0.000000000001"), max_usd=Decimal("1.000000000001"))],
        now=0.0,
    )
    assert isinstance(refused, Refusal) and refused.would_be == Decimal("1.000000000002")


def test_settling_twice_refunds_once(store: PostgresStore) -> None:
    """A grant is consumed by its first settlement; a second one changes nothing."""
    cap = Decimal("1.00")
    grant = store.reserve([ScopedCharge(scope="t", usd=Decimal("0.90"), max_usd=cap)], now=0.0)
    assert isinstance(grant, str)
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.50"))])
    store.settle(grant, [ScopedCharge(scope="t", usd=Decimal("0.00"))])
    assert store.scope_usage("t")[1] == Decimal("0.50")


def test_a_hold_from_a_closed_window_does_not_touch_the_new_one(store: PostgresStore) -> None:
    """Settling a grant after its window ended leaves the new window's count alone."""
    grant = store.reserve(
        [ScopedCharge(scope="w", calls=1, max_calls=1, window_ends=100.0)], now=10.0
    )
    assert isinstance(grant, str)
    fresh = store.reserve(
        [ScopedCharge(scope="w", calls=1, max_calls=1, window_ends=200.0)], now=150.0
    )
    assert isinstance(fresh, str)
    store.settle(grant, [])
    assert store.scope_usage("w")[0] == 1
    refused = store.reserve(
        [ScopedCharge(scope="w", calls=1, max_calls=1, window_ends=200.0)], now=160.0
    )
    assert isinstance(refused, Refusal) and refused.retry_after == pytest.approx(40.0)


def test_json_values_round_trip(store: PostgresStore) -> None:
    """Event data, usage and stops come back as JSON values; decimals as their exact text."""
    store.create_run(RunRecord(id="r", usage={"usd": "0.70"}, stop={"reason": "ok"}))
    store.append_events(
        [Event(run_id="r", seq=1, kind="tool", at=1.5, data={"usd": Decimal("0.70"), "n": [1]})]
    )
    [event] = store.events("r")
    assert event.data == {"usd": "0.70", "n": [1]} and event.at == 1.5
    run = store.get_run("r")
    assert run is not None and run.usage == {"usd": "0.70"} and run.stop == {"reason": "ok"}


def test_a_schema_keeps_stores_apart(store: PostgresStore, url: str) -> None:
    """Stores in different schemas (``?schema=`` in the URL) share nothing."""
    from corral.stores.postgres import PostgresStore

    other = new_schema()
    try:
        with PostgresStore(f"{url}?schema={other}") as elsewhere:
            elsewhere.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
            assert elsewhere.schema == other and len(elsewhere.kill_switches()) == 1
            assert store.kill_switches() == []
    finally:
        drop_schema(url, other)


def test_a_bad_schema_name_is_a_config_error(url: str) -> None:
    """Schema names are plain identifiers; anything else is refused before connecting."""
    from corral.stores.postgres import PostgresStore

    with pytest.raises(ConfigError, match="schema"):
        PostgresStore(url, schema="x; DROP TABLE y")


def test_kill_switch_changes_are_notified(store: PostgresStore, url: str) -> None:
    """Setting and clearing a kill switch sends NOTIFY corral_kill_switch to listeners."""
    with _raw(url) as listener:
        listener.execute("LISTEN corral_kill_switch")
        store.set_kill_switch(KillSwitchState(scope="tool", target="browser.open"))
        store.clear_kill_switch("tool", "browser.open")
        got = [n.payload for n in listener.notifies(timeout=2.0, stop_after=2)]
    assert got == ["tool:browser.open", "tool:browser.open"]


def test_runs_of_a_dead_process_are_marked_interrupted_once(store: PostgresStore) -> None:
    """A running run whose heartbeat lapsed is marked interrupted, with an event saying why."""
    from corral.stores.owner import RunOwner

    elsewhere = RunOwner(host="other-machine", pid=1, node="other")
    store.create_run(RunRecord(id="lost", owner=elsewhere, heartbeat_at=100.0))
    store.create_run(RunRecord(id="mine"))
    assert store.mark_interrupted(now=100.0 + 7200.0) == ["lost"]
    assert store.mark_interrupted(now=100.0 + 7200.0) == []
    lost, mine = store.get_run("lost"), store.get_run("mine")
    assert lost is not None and lost.status == "interrupted" and lost.ended_at == 100.0
    assert mine is not None and mine.status == "running" and mine.owner == RunOwner.current()
    [event] = store.events("lost")
    assert event.kind == "interrupted" and "no heartbeat" in event.data["why"]
