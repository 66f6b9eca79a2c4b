"""The audit chain on every backend, attacked through the database itself (raw SQL on the
SQLite file and the PostgreSQL schema, the record list in memory): every tampering is found,
the ones no check inside the database can see are found against a checkpoint; appenders in
several processes make one chain; a database from before the chain is upgraded and sealed."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from pg import PG_URL as POSTGRES_URL
from pg import fresh_store, new_schema, require_postgres
from tamper import rewrite, tamperer

from corral.audit import checkpoint, verify
from corral.stores import Store
from corral.stores.base import AuditHead, AuditRecord, Event
from corral.stores.chain import Sealer
from corral.stores.migrate import SQLITE, load, migrate
from corral.stores.postgres import PostgresStore
from corral.stores.sqlite import SQLiteStore

SPAWN = multiprocessing.get_context("spawn")
KEY = "the-audit-key-0123456789"
DATABASES = ["sqlite", "postgres"]


def fill(store: Store, runs: int = 3, per_run: int = 2) -> list[AuditRecord]:
    """Append ``runs`` x ``per_run`` events (one batch per run); return the sealed records."""
    for r in range(runs):
        store.append_events(
            [
                Event(
                    run_id=f"run_{r}",
                    seq=i,
                    kind="tool_call",
                    at=100.0 + 10 * r + i,
                    data={"tool": "refund.send", "args_digest": f"{r}{i}" * 8, "usd": "5.00"},
                    tenant="acme",
                    actor="support-bot",
                )
                for i in range(1, per_run + 1)
            ]
        )
    return store.audit_records()


def broken_at(store: Store, seq: int, why: str, **options: Any) -> None:
    """``verify`` reports record ``seq`` as the first broken one, for a reason matching ``why``."""
    result = verify(store, **options)
    assert not result.ok, "the tampering went unnoticed"
    assert result.broken is not None
    assert result.broken.seq == seq, str(result)
    assert why in result.broken.why, str(result)
    assert result.checked == seq - 1


@pytest.fixture
def tamper(store: Store) -> Iterator[Any]:
    """Raw access to ``store``'s records, as someone holding the database would have."""
    with tamperer(store, POSTGRES_URL) as t:
        yield t


def test_an_untouched_chain_verifies(store: Store) -> None:
    """Six records, checkpointed: verify says intact, with and without the checkpoint."""
    records = fill(store)
    anchor = checkpoint(store)
    assert (anchor["seq"], anchor["hash"], anchor["mode"]) == (6, records[-1].hash, "sha256")
    result = verify(store, anchor=anchor)
    assert (result.ok, result.checked, result.head, result.anchor) == (True, 6, 6, 6)


@pytest.mark.parametrize("store", DATABASES, indirect=True)
def test_the_database_refuses_to_change_or_delete_a_sealed_record(store: Store) -> None:
    """Append-only in the schema: UPDATE, DELETE (and TRUNCATE) of a sealed event fail."""
    fill(store, runs=1)
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, timeout=10)
        try:
            for sql in ("UPDATE corral_events SET kind = 'x'", "DELETE FROM corral_events"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    conn.execute(sql)
        finally:
            conn.close()
    else:
        import psycopg

        schema = store.schema  # type: ignore[attr-defined]
        with psycopg.connect(
            POSTGRES_URL, autocommit=True, options=f"-c search_path={schema}"
        ) as conn:
            for sql in (
                "UPDATE corral_events SET kind = 'x'",
                "DELETE FROM corral_events",
                "TRUNCATE corral_events",
            ):
                with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                    conn.execute(sql)
    assert verify(store).ok


FIELDS = {
    "data": {"tool": "refund.send", "args_digest": "forged", "usd": "5000.00"},
    "kind": "denied",
    "run_id": "run_other",
    "tenant": "globex",
    "actor": "mallory",
    "at": 1.0,
    "event_seq": 99,
    "mode": "md5",
}


def test_editing_any_field_of_a_record_is_detected(store: Store, tamper: Any) -> None:
    """Each field of record 3 edited in turn (then put back): verify names record 3."""
    records = fill(store)
    original = records[2]
    for name, value in FIELDS.items():
        tamper.edit(3, **{name: value})
        broken_at(store, 3, "forged" if name == "mode" else "edited")
        tamper.edit(3, **{name: getattr(original, name)})
        assert verify(store).ok, f"putting {name} back must restore the chain"


def test_editing_a_record_and_its_hash_is_detected_at_the_next(store: Store, tamper: Any) -> None:
    """Re-hashing the edited record (no key needed) breaks the link to the record after it."""
    records = fill(store)
    forged = dataclasses.replace(records[2], data={"tool": "refund.send", "usd": "5000.00"})
    (resealed,) = Sealer().seal(AuditHead(seq=2, hash=records[1].hash), [_event(forged)])
    tamper.edit(3, data=resealed.data, hash=resealed.hash)
    broken_at(store, 4, "does not follow")


def test_deleting_a_record_is_detected(store: Store, tamper: Any) -> None:
    """Record 3 deleted: verify says it is missing."""
    fill(store)
    tamper.delete(3)
    broken_at(store, 3, "record 3 is missing")


def test_deleting_and_renumbering_is_detected(store: Store, tamper: Any) -> None:
    """Record 3 deleted and the rest renumbered to close the gap: the links do not hold."""
    fill(store)
    tamper.delete(3)
    tamper.renumber(after=3, by=-1)
    tamper.set_head(5, store.audit_records()[-1].hash)
    broken_at(store, 3, "does not follow")


def test_reordering_records_is_detected(store: Store, tamper: Any) -> None:
    """Records 2 and 4 swap places: verify names the first out of place."""
    fill(store)
    tamper.swap(2, 4)
    broken_at(store, 2, "does not follow")


def test_a_record_spliced_into_the_middle_is_detected(store: Store, tamper: Any) -> None:
    """A well-formed forged record inserted after record 3 (the rest moved up): found at 5."""
    records = fill(store)
    forged_event = Event(run_id="run_1", seq=3, kind="approval", at=125.0, data={"approved": True})
    (forged,) = Sealer().seal(AuditHead(seq=3, hash=records[2].hash), [forged_event])
    tamper.renumber(after=3, by=1)
    tamper.insert(forged)
    tamper.set_head(7, records[-1].hash)
    broken_at(store, 5, "does not follow")


@pytest.mark.parametrize("store", DATABASES, indirect=True)  # in memory, the head is the tail
def test_a_truncated_tail_is_detected_by_the_recorded_head(store: Store, tamper: Any) -> None:
    """Records 5 and 6 deleted, the head left as it was: the chain is shorter than its head."""
    fill(store)
    tamper.delete(5, 6)
    broken_at(store, 5, "truncated")


def test_a_truncated_tail_is_detected_against_a_checkpoint(store: Store, tamper: Any) -> None:
    """Tail and head both cut back: nothing inside the database shows it, the checkpoint does."""
    records = fill(store)
    anchor = checkpoint(store)
    tamper.delete(5, 6)
    tamper.set_head(4, records[3].hash)
    assert verify(store).ok  # consistent in itself: only an outside anchor can tell
    broken_at(store, 5, "truncated", anchor=anchor)


def test_a_chain_rewritten_without_the_key_is_detected_against_a_checkpoint(
    store: Store, tamper: Any
) -> None:
    """An unkeyed chain re-sealed from the start with one record changed verifies on its own;
    against the checkpoint taken before, the record it names differs."""
    records = fill(store)
    anchor = checkpoint(store)
    events = [_event(r) for r in records]
    events[1] = dataclasses.replace(events[1], data={"tool": "refund.send", "usd": "0.01"})
    rewrite(tamper, records, Sealer().seal(AuditHead(), events))
    assert verify(store).ok
    broken_at(store, 6, "rewritten", anchor=anchor)


def test_a_keyed_chain_cannot_be_forged_or_rewritten_without_the_key(
    new_store: Callable[[], AbstractContextManager[Store]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed: a forged record (plain or under a guessed key), a tail re-sealed without the key,
    and a chain rewritten from the start (against a checkpoint) are all detected."""
    monkeypatch.setenv("CORRAL_AUDIT_KEY", KEY)
    with new_store() as store, tamperer(store, POSTGRES_URL) as tamper:
        records = fill(store)
        anchor = checkpoint(store)
        assert verify(store).keyed == 6
        # A forged record 4, sealed plainly, and everything after re-sealed plainly too.
        events = [_event(r) for r in records]
        events[3] = dataclasses.replace(events[3], data={"tool": "refund.send", "usd": "0"})
        tail = Sealer().seal(AuditHead(seq=3, hash=records[2].hash), events[3:])
        rewrite(tamper, records[3:], tail)
        broken_at(store, 4, "sealed without the key")
        # The same under a guessed key, labelled as the real one.
        guessed = Sealer("guessed").seal(AuditHead(seq=3, hash=records[2].hash), events[3:])
        labelled = [dataclasses.replace(r, mode=records[0].mode) for r in guessed]
        rewrite(tamper, tail, labelled)
        broken_at(store, 4, "forged without the key")
        # The whole chain rewritten without the key: only the checkpoint shows it.
        everything = Sealer().seal(AuditHead(), events)
        rewrite(tamper, [*records[:3], *labelled], everything)
        assert verify(store).ok and verify(store).keyed == 0
        broken_at(store, 6, "rewritten", anchor=anchor)


def _event(record: AuditRecord) -> Event:
    return Event(
        run_id=record.run_id,
        seq=record.event_seq,
        kind=record.kind,
        at=record.at,
        data=record.data,
        tenant=record.tenant,
        actor=record.actor,
    )


# -- many processes -------------------------------------------------------------------------
def append_batches(target: str, schema: str, start: Any, out: Any) -> None:
    """Child: open the store, wait for the others, append 30 batches of 2 events."""
    import os

    store: Store = (
        PostgresStore(target, schema=schema, migrate=False) if schema else SQLiteStore(target)
    )
    try:
        start.wait()
        for n in range(30):
            store.append_events(
                [
                    Event(run_id=f"p{os.getpid()}", seq=2 * n + i, kind="step", at=float(n))
                    for i in (1, 2)
                ]
            )
    finally:
        store.close()
    out.send(60)
    out.close()


def _three_processes(target: str, schema: str) -> int:
    start = SPAWN.Barrier(3)
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(3)]
    procs = [
        SPAWN.Process(target=append_batches, args=(target, schema, start, send))
        for _, send in pipes
    ]
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()
    try:
        total = sum(recv.recv() for recv, _ in pipes)
    finally:
        for p in procs:
            p.join(timeout=30)
        for recv, _ in pipes:
            recv.close()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    return total


def test_processes_appending_to_one_sqlite_file_make_one_chain(tmp_path: Path) -> None:
    """3 processes append 60 events each to one file at once: 180 records, one valid chain."""
    path = tmp_path / "shared.db"
    SQLiteStore(path).close()
    assert _three_processes(str(path), "") == 180
    with SQLiteStore(path) as store:
        result = verify(store)
        assert result.ok and result.checked == 180 == store.audit_head().seq


def test_processes_appending_to_one_postgres_schema_make_one_chain() -> None:
    """3 processes append 60 events each to one schema at once: 180 records, one valid chain."""
    url = require_postgres(POSTGRES_URL)
    with fresh_store(url) as store:
        assert _three_processes(url, store.schema) == 180
        result = verify(store)
        assert result.ok and result.checked == 180 == store.audit_head().seq


# -- upgrading a database from before the chain --------------------------------------------
V1_EVENTS = [
    ("r1", 1, "run_start", 1.0, '{"policy": "abc"}'),
    ("r1", 2, "tool_call", 2.5, '{"tool": "kb.read", "seconds": 1.0, "usd": "0"}'),
    ("r1", 3, "run_end", 3.0, '{"stop_reason": "ok"}'),
]


def _check_upgraded(store: Store) -> None:
    records = store.audit_records()
    assert [(r.run_id, r.event_seq, r.kind) for r in records] == [e[:3] for e in V1_EVENTS]
    assert {(r.tenant, r.actor) for r in records} == {("acme", "bot")}
    store.append_events([Event(run_id="r2", seq=1, kind="run_start", at=4.0)])
    result = verify(store)
    assert result.ok and result.checked == 4


def test_a_sqlite_file_from_before_the_chain_is_upgraded_and_sealed(tmp_path: Path) -> None:
    """A version-1 file with events (ids with gaps): opening it numbers and seals them in
    order; new ones follow on."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn, SQLITE, load("sqlite")[:1])
        conn.execute("INSERT INTO corral_runs (id, tenant, agent) VALUES ('r1', 'acme', 'bot')")
        conn.executemany(  # ids with gaps: sealing numbers them 1, 2, 3 in their order
            "INSERT INTO corral_events (id, run_id, seq, kind, at, data) VALUES (?, ?, ?, ?, ?, ?)",
            [(i, *e) for i, e in zip((5, 9, 12), V1_EVENTS, strict=True)],
        )
    finally:
        conn.close()
    with SQLiteStore(path) as store:
        _check_upgraded(store)


def test_a_postgres_schema_from_before_the_chain_is_upgraded_and_sealed() -> None:
    """A version-1 schema with events: opening it seals them in order; new ones follow on."""
    import psycopg

    from corral.stores.migrate import POSTGRES

    url = require_postgres(POSTGRES_URL)
    schema = new_schema()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"SET search_path = {schema}")
        migrate(conn, POSTGRES, load("postgres")[:1])
        conn.execute("INSERT INTO corral_runs (id, tenant, agent) VALUES ('r1', 'acme', 'bot')")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO corral_events (run_id, seq, kind, at, data) "
                "VALUES (%s, %s, %s, %s, %s::jsonb)",
                V1_EVENTS,
            )
    with fresh_store(url, schema=schema) as store:
        assert store.schema_version() == len(load("postgres"))
        _check_upgraded(store)
