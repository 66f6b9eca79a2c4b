"""The SQLite store beyond the shared contract: the file, its schema, URLs, and many processes."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sqlite3
import sys
import time
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from corral.exceptions import ConfigError, StoreError, StoreMissing
from corral.record.audit import verify
from corral.stores import default_path, default_url, open_store
from corral.stores.base import (
    ApprovalRecord,
    BreakerState,
    Event,
    KillSwitchState,
    RunRecord,
    ScopedCharge,
)
from corral.stores.migrate import SQLITE, TABLE, current_version, load, migrate
from corral.stores.sqlite import SQLiteStore

SPAWN = multiprocessing.get_context("spawn")
LATEST = len(load("sqlite"))
CAP, COST = Decimal("50.00"), Decimal("0.70")


def pragma(store: SQLiteStore, name: str) -> Any:
    with store._locked() as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def versions(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT version, name FROM {TABLE} ORDER BY version").fetchall()
    finally:
        conn.close()


# -- the file ---------------------------------------------------------------------------


def test_opening_creates_the_file_in_wal_mode(tmp_path: Path) -> None:
    """A new file gets the schema, WAL journaling and synchronous=NORMAL."""
    path = tmp_path / "new.db"
    with SQLiteStore(path) as store:
        assert path.exists()
        assert pragma(store, "journal_mode") == "wal"
        assert pragma(store, "synchronous") == 1  # NORMAL
        assert pragma(store, "busy_timeout") == 10_000


def test_synchronous_full_can_be_chosen(tmp_path: Path) -> None:
    """synchronous=FULL is available (it also survives power loss); nonsense is refused."""
    with SQLiteStore(tmp_path / "full.db", synchronous="full") as store:
        assert pragma(store, "synchronous") == 2
    with pytest.raises(ConfigError, match="synchronous: must be NORMAL, FULL or EXTRA"):
        SQLiteStore(tmp_path / "x.db", synchronous="sometimes")


def test_everything_survives_closing_and_reopening(tmp_path: Path) -> None:
    """Runs, events, budgets, switches, approvals, claims and breakers are on disk."""
    path = tmp_path / "corral.db"
    with SQLiteStore(path) as store:
        store.create_run(RunRecord(id="r1", tenant="acme", started_at=1.0))
        store.append_events([Event(run_id="r1", seq=1, kind="step", at=1.0, data={"n": 1})])
        store.update_run("r1", status="ok", stop_reason="ok", usage={"usd": "0.70"})
        charge = ScopedCharge(scope="tenant:acme/1d", usd=Decimal("0.123456789012"), max_usd=CAP)
        assert isinstance(store.reserve([charge], now=0.0), str)
        store.set_kill_switch(KillSwitchState(scope="tool", target="browser.open", reason="x"))
        store.create_approval(
            ApprovalRecord(id="a1", run_id="r1", tool="t", args_digest="d", arguments={"n": 1})
        )
        store.claim("k", "d", tenant="acme", now=0.0, lease=60.0)
        store.complete("k", {"output": {"sent": True}}, tenant="acme")
        store.set_breaker("browser.open", BreakerState(state="open", until=50.0))
    with SQLiteStore(path) as store:
        run = store.get_run("r1")
        assert run is not None and run.status == "ok" and run.usage == {"usd": "0.70"}
        assert [e.data for e in store.events("r1")] == [{"n": 1}]
        assert store.scope_usage("tenant:acme/1d") == (0, Decimal("0.123456789012"))
        assert [s.target for s in store.kill_switches()] == ["browser.open"]
        assert [a.arguments for a in store.list_approvals()] == [{"n": 1}]
        done = store.claim("k", "d", tenant="acme", now=1.0, lease=60.0)
        assert done.status == "done" and done.outcome == {"output": {"sent": True}}
        assert store.breaker("browser.open", now=10.0).state == "open"


def test_appending_events_renews_the_heartbeat(tmp_path: Path) -> None:
    """Every write to a running run renews its heartbeat, so a live run keeps its lease."""
    with SQLiteStore(tmp_path / "hb.db") as store:
        store.create_run(RunRecord(id="r1", heartbeat_at=1.0))
        store.append_events([Event(run_id="r1", seq=1, kind="step", at=1.0)])
        run = store.get_run("r1")
        assert run is not None and run.heartbeat_at is not None
        assert run.heartbeat_at > time.time() - 60


def test_appends_renew_the_heartbeat_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends within HEARTBEAT_SECONDS renew a run's heartbeat once; after it, again."""
    from corral.stores.sqlite import connection as sqlite_connection

    with SQLiteStore(tmp_path / "hb.db") as store:
        store.create_run(RunRecord(id="r1", heartbeat_at=1.0))
        store.append_events([Event(run_id="r1", seq=1, kind="step", at=1.0)])
        store.update_run("r1", heartbeat_at=2.0)
        store.append_events([Event(run_id="r1", seq=2, kind="step", at=1.0)])
        run = store.get_run("r1")
        assert run is not None and run.heartbeat_at == 2.0
        monkeypatch.setattr(sqlite_connection, "HEARTBEAT_SECONDS", 0.0)
        store.append_events([Event(run_id="r1", seq=3, kind="step", at=1.0)])
        run = store.get_run("r1")
        assert run is not None and run.heartbeat_at is not None
        assert run.heartbeat_at > time.time() - 60


def test_the_calls_of_the_allow_path_leave_no_read_transaction_open(tmp_path: Path) -> None:
    """After breaker reads and appends (of one event and of several) another connection can
    checkpoint the whole WAL and write: no statement of the store's holds a snapshot."""
    path = tmp_path / "open.db"
    with SQLiteStore(path) as store:
        store.create_run(RunRecord(id="r1"))
        store.set_breaker("shop.pay", BreakerState(state="open", until=time.time() + 60))
        for seq in range(1, 40):
            assert store.breaker("shop.pay", now=time.time()).state == "open"
            assert store.breaker("kb.read", now=time.time()).state == "closed"
            batch = [Event(run_id="r1", seq=seq, kind="step", at=1.0, data={"n": seq})]
            store.append_events(batch if seq % 3 else batch * 2)
        other = sqlite3.connect(path, isolation_level=None, timeout=1)
        try:
            busy, frames, done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert (busy, frames, done) == (0, 0, 0)
            other.execute("DELETE FROM corral_breakers WHERE name = 'shop.pay'")
        finally:
            other.close()
        assert store.breaker("shop.pay", now=time.time()).state == "closed"
        assert verify(store).ok and len(store.events("r1")) == 52


def test_a_failed_write_rolls_back_and_leaves_the_store_usable(tmp_path: Path) -> None:
    """A write whose statement fails raises StoreError, keeps nothing of it, and the next
    write on the same connection succeeds."""
    with SQLiteStore(tmp_path / "tx.db") as store:
        with pytest.raises(StoreError), store._write() as conn:
            conn.execute("INSERT INTO corral_breakers (name, state, until) VALUES ('a', 'x', 0)")
            conn.execute("INSERT INTO no_such_table VALUES (1)")
        assert store.breaker("a", now=0.0).state == "closed"
        with pytest.raises(RuntimeError), store._write() as conn:
            conn.execute("INSERT INTO corral_breakers (name, state, until) VALUES ('b', 'x', 0)")
            raise RuntimeError("not SQLite's")
        assert store.breaker("b", now=0.0).state == "closed"
        store.set_breaker("c", BreakerState(state="open", until=10.0))
        assert store.breaker("c", now=0.0).state == "open"


def test_a_path_that_cannot_be_opened_is_a_store_error(tmp_path: Path) -> None:
    """A file in a missing folder fails at open, naming the file."""
    with pytest.raises(StoreError, match="nowhere"):
        SQLiteStore(tmp_path / "nowhere" / "corral.db")


def test_a_closed_store_refuses_every_call(tmp_path: Path) -> None:
    """After close(), calls raise StoreError (callers fail closed) instead of reopening."""
    store = SQLiteStore(tmp_path / "c.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.kill_switches()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    """A store inherited through fork reconnects in the child; the parent's keeps working."""
    with SQLiteStore(tmp_path / "fork.db") as store:
        store.set_kill_switch(KillSwitchState(scope="global", reason="parent"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = [s.reason for s in store.kill_switches()] == ["parent"]
            store.set_kill_switch(KillSwitchState(scope="tool", target="x", reason="child"))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sorted(s.reason for s in store.kill_switches()) == ["child", "parent"]


# -- schema versions --------------------------------------------------------------------


def test_a_fresh_file_gets_the_latest_schema_and_reopening_changes_nothing(
    tmp_path: Path,
) -> None:
    """Opening a new file applies every migration once; opening it again applies none."""
    path = tmp_path / "v.db"
    SQLiteStore(path).close()
    first = versions(path)
    assert [v for v, _ in first] == list(range(1, LATEST + 1))
    SQLiteStore(path).close()
    assert versions(path) == first


def test_an_older_file_is_upgraded_on_open(tmp_path: Path) -> None:
    """A file at an earlier schema version is brought to the latest when opened."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, SQLITE, load("sqlite")[:-1])
        assert current_version(conn, SQLITE) == LATEST - 1
    finally:
        conn.close()
    with SQLiteStore(path) as store:
        store.create_run(RunRecord(id="r1"))
    assert [v for v, _ in versions(path)] == list(range(1, LATEST + 1))


def test_a_file_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A schema this code does not know is refused with a clear message and left as it is."""
    path = tmp_path / "new.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"INSERT INTO {TABLE} VALUES (999, 'future', 0)")
    finally:
        conn.close()
    with pytest.raises(ConfigError) as raised:
        SQLiteStore(path)
    message = str(raised.value)
    assert str(path) in message and "schema version 999" in message
    assert "upgrade corral" in message
    assert versions(path)[-1] == (999, "future")


# -- URLs -------------------------------------------------------------------------------


def test_the_default_store_is_one_file_per_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without CORRAL_DB the default store is corral.db in the user data directory, whatever
    the working directory; its folder appears only when a store is created there."""
    monkeypatch.delenv("CORRAL_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    expected = tmp_path / "data" / "corral" / "corral.db"
    assert default_path() == str(expected)
    assert default_url() == f"sqlite:///{expected}"
    with pytest.raises(StoreMissing, match=f"no corral store at {expected}"):
        open_store(create=False)
    assert not (tmp_path / "data").exists()
    store = open_store()
    try:
        assert isinstance(store, SQLiteStore) and Path(store.path) == expected
        assert not (tmp_path / "corral.db").exists()
    finally:
        store.close()
    monkeypatch.setenv("CORRAL_DB", "memory://from-env")
    assert open_store() is open_store("memory://from-env")


def test_sqlite_urls_name_files_and_share_one_store_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Relative and absolute paths, in-memory forms and options; one open store per file."""
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///sub.db")
    absolute = open_store(f"sqlite:///{tmp_path}/sub.db")  # sqlite:////abs/path
    memory = open_store("sqlite://")
    try:
        assert relative is absolute and isinstance(relative, SQLiteStore)
        assert relative.path == str(tmp_path / "sub.db")
        assert memory is open_store("sqlite:///:memory:")
        assert isinstance(memory, SQLiteStore) and memory.path == ":memory:"
        relative.close()
        reopened = open_store("sqlite:///sub.db")
        assert reopened is not relative and not getattr(reopened, "closed", True)
        full = open_store("sqlite:///full.db?synchronous=full")
        assert isinstance(full, SQLiteStore) and full.synchronous == "FULL"
    finally:
        for url in ("sqlite:///sub.db", "sqlite://", "sqlite:///full.db"):
            open_store(url).close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "did you mean sqlite:///host/x.db"),
        ("sqlite:///x.db?cache=shared", "unknown option 'cache'"),
        ("corral.db", "has no scheme"),
        ("redis://localhost", "unsupported store URL scheme 'redis'"),
    ],
)
def test_unusable_urls_are_config_errors(url: str, message: str) -> None:
    """A URL that cannot name a store says why, before touching any file."""
    with pytest.raises(ConfigError, match=message):
        open_store(url)


def test_postgresql_urls_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the PostgreSQL module or its driver, postgresql:// is a clear ConfigError."""
    monkeypatch.setitem(sys.modules, "corral.stores.postgres", None)
    with pytest.raises(ConfigError, match="not supported by this version"):
        open_store("postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.delitem(sys.modules, "corral.stores.postgres")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ConfigError, match=r"need the PostgreSQL driver \(psycopg is missing\)"):
        open_store("postgres://nobody@127.0.0.1:1/none")


# -- many processes ---------------------------------------------------------------------


def reserve_until_refused(path: str, start: Any, out: Any) -> None:
    """Child: reserve 0.70 against the shared 50.00 cap until refused; report grants."""
    with SQLiteStore(path) as store:
        start.wait()
        granted = 0
        charge = ScopedCharge(scope="tenant:acme/1d", calls=1, usd=COST, max_usd=CAP)
        for _ in range(60):
            grant = store.reserve([charge], now=0.0)
            if isinstance(grant, str):
                granted += 1
                store.settle(grant, [charge])
    out.send(granted)
    out.close()


def claim_once(path: str, start: Any, out: Any) -> None:
    """Child: open the (maybe brand-new) file, then claim one key at the same moment as the rest."""
    with SQLiteStore(path) as store:
        start.wait()
        out.send(store.claim("refund:42", "d", tenant="acme", now=0.0, lease=60.0).status)
    out.close()


def append_for_ever(path: str, out: Any) -> None:
    """Child: finish one run, then append events to another until killed, reporting each."""
    store = SQLiteStore(path)
    store.create_run(RunRecord(id="finished", started_at=1.0))
    store.update_run("finished", status="ok", stop_reason="ok")
    store.create_run(RunRecord(id="victim", started_at=2.0))
    seq = 0
    while True:
        seq += 1
        store.append_events(
            [Event(run_id="victim", seq=seq, kind="step", at=time.time(), data={"n": seq})]
        )
        out.send(seq)  # only after the commit


def run_children(target: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    """Start one spawned process per args (each gets a pipe end last), collect one result each."""
    pipes = [SPAWN.Pipe(duplex=False) for _ in args]
    procs = [
        SPAWN.Process(target=target, args=(*a, send))
        for a, (_, send) in zip(args, pipes, strict=True)
    ]
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()
    try:
        results = [recv.recv() for recv, _ in pipes]
    finally:
        for p in procs:
            p.join(timeout=20)
        for recv, _ in pipes:
            recv.close()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return results


def test_processes_reserving_one_scope_never_pass_the_cap(tmp_path: Path) -> None:
    """3 processes race for a 50.00 cap at 0.70 a call: exactly 71 grants, 49.70 spent."""
    path = tmp_path / "budget.db"
    SQLiteStore(path).close()
    start = SPAWN.Barrier(3)
    granted = run_children(reserve_until_refused, [(str(path), start)] * 3)
    with SQLiteStore(path) as store:
        calls, usd = store.scope_usage("tenant:acme/1d")
    print(f"spend {usd} vs cap {CAP} ({sum(granted)} grants across {granted})")
    assert sum(granted) == calls == 71
    assert usd == Decimal("49.70") <= CAP


def test_exactly_one_process_wins_an_idempotency_claim(tmp_path: Path) -> None:
    """4 processes open a new file at once (one migrates it) and claim one key: one wins."""
    path = tmp_path / "claims.db"
    start = SPAWN.Barrier(4)
    statuses = run_children(claim_once, [(str(path), start)] * 4)
    assert sorted(statuses) == ["claimed", "in_flight", "in_flight", "in_flight"]
    assert [v for v, _ in versions(path)] == list(range(1, LATEST + 1))


def test_a_killed_writer_loses_nothing_committed_and_its_run_is_interrupted(
    tmp_path: Path,
) -> None:
    """SIGKILL mid-writes: the file opens, every committed event is kept, the run is interrupted."""
    path = tmp_path / "crash.db"
    SQLiteStore(path).close()
    recv, send = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=append_for_ever, args=(str(path), send))
    child.start()
    send.close()
    try:
        committed = 0
        while committed < 50:
            committed = recv.recv()
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=20)
        with contextlib.suppress(EOFError):  # the pipe ends where the child was killed
            while recv.poll():
                committed = recv.recv()
    finally:
        recv.close()
    assert child.exitcode == -signal.SIGKILL
    with SQLiteStore(path) as store:
        victim = store.get_run("victim")
        assert victim is not None and victim.status == "interrupted"
        events = store.events("victim")
        seqs = [e.seq for e in events if e.kind == "step"]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= committed
        assert events[-1].kind == "interrupted" and "no longer running" in events[-1].data["why"]
        finished = store.get_run("finished")
        assert finished is not None and finished.status == "ok"
        assert pragma(store, "integrity_check") == "ok"
        chain = verify(store)  # the audit chain survives the kill, its `interrupted` record too
        assert chain.ok and chain.checked == len(events) == store.audit_head().seq
