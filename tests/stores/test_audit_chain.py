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
from hypothesis import given, settings
from hypothesis import strategies as st
from pg import PG_URL as POSTGRES_URL
from pg import fresh_store, new_schema, require_postgres
from tamper import rewrite, tamperer

from corral.record.audit import KeyRequired, checkpoint, verify
from corral.stores import Store
from corral.stores.base import AuditHead, AuditRecord, Event
from corral.stores.chain import Sealer
from corral.stores.memory import MemoryStore
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
        # The whole chain rewritten without the key: consistent in itself, so it verifies
        # only without the key; with the key it holds no keyed record, and the checkpoint
        # names the record that differs.
        everything = Sealer().seal(AuditHead(), events)
        rewrite(tamper, [*records[:3], *labelled], everything)
        assert verify(store, key=[]).ok
        broken_at(store, 1, "holds no keyed record")
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


# -- a keyed chain cannot be downgraded -----------------------------------------------------
def events(n: int, tenant: str = "acme") -> list[Event]:
    """``n`` events of one run, as a governed run would record them."""
    return [
        Event(
            run_id="run_k",
            seq=i,
            kind="tool_call",
            at=200.0 + i,
            data={"tool": "refund.send", "usd": "5.00", "i": i},
            tenant=tenant,
            actor="support-bot",
        )
        for i in range(1, n + 1)
    ]


def sealed(plain: int, keyed: int, key: str = KEY) -> list[AuditRecord]:
    """A chain of ``plain`` records sealed without a key, then ``keyed`` sealed under ``key``
    (a store that ran without CORRAL_AUDIT_KEY, then with it)."""
    evs = events(plain + keyed)
    first = Sealer().seal(AuditHead(), evs[:plain])
    after = AuditHead(seq=plain, hash=first[-1].hash) if first else AuditHead()
    return [*first, *Sealer(key).seal(after, evs[plain:])]


def install(tamper: Any, store: Store, chain: list[AuditRecord]) -> None:
    """Make ``chain`` the store's whole audit log (and its head)."""
    rewrite(tamper, store.audit_records(), chain)


def test_a_chain_keyed_from_a_record_on_says_where_keying_began(store: Store, tamper: Any) -> None:
    """3 records sealed before the key was set, 3 after: intact under the key, keyed from
    record 4 with 3 unkeyed before it; without the key, the keyed records need it."""
    install(tamper, store, sealed(3, 3))
    result = verify(store, key=KEY)
    assert (result.ok, result.checked, result.keyed, result.keyed_from, result.unkeyed) == (
        True,
        6,
        3,
        4,
        3,
    )
    assert "3 keyed from record 4; 3 unkeyed records before" in str(result)
    assert result.to_dict()["keyed_from"] == 4 and result.to_dict()["unkeyed"] == 3
    with pytest.raises(KeyRequired, match="CORRAL_AUDIT_KEY"):
        verify(store, key=[])


def test_a_keyed_chain_rewritten_as_plain_sha256_fails_under_the_key(
    new_store: Callable[[], AbstractContextManager[Store]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The break: every record and the head re-sealed as plain SHA-256 with the tenant changed.
    With the key it holds no keyed record and fails, saying how an unkeyed chain is verified."""
    monkeypatch.setenv("CORRAL_AUDIT_KEY", KEY)
    with new_store() as store, tamperer(store, POSTGRES_URL) as tamper:
        records = fill(store)
        assert verify(store).keyed == 6
        forged = [dataclasses.replace(_event(r), tenant="globex") for r in records]
        rewrite(tamper, records, Sealer().seal(AuditHead(), forged))
        result = verify(store)
        assert not result.ok and result.broken is not None and result.broken.seq == 1
        assert "holds no keyed record" in result.broken.why
        assert "without the key" in result.broken.why and result.keyed_from is None
        assert verify(store, key=[]).ok  # consistent in itself, as any unkeyed chain


def test_a_keyed_chain_cut_back_to_its_unkeyed_records_fails_under_the_key(
    store: Store, tamper: Any
) -> None:
    """The keyed tail deleted and the head moved to the last unkeyed record: nothing keyed is
    left, so under the key the chain fails."""
    chain = sealed(3, 3)
    install(tamper, store, chain)
    tamper.delete(4, 5, 6)
    tamper.set_head(3, chain[2].hash)
    broken_at(store, 1, "holds no keyed record", key=KEY)


def test_an_unkeyed_record_after_a_keyed_one_is_forged(store: Store, tamper: Any) -> None:
    """A plain record appended after keyed ones, or spliced between two of them (linked
    correctly, the rest moved up), is found where it stands."""
    chain = sealed(0, 4)
    install(tamper, store, chain)
    extra = Event(run_id="run_k", seq=9, kind="approval", at=300.0, data={"approved": True})
    (appended,) = Sealer().seal(AuditHead(seq=4, hash=chain[3].hash), [extra])
    tamper.insert(appended)
    tamper.set_head(5, appended.hash)
    broken_at(store, 5, "sealed without the key after keyed records", key=KEY)
    tamper.delete(5)
    tamper.set_head(4, chain[3].hash)
    assert verify(store, key=KEY).ok
    (spliced,) = Sealer().seal(AuditHead(seq=2, hash=chain[1].hash), [extra])
    tamper.renumber(after=2, by=1)
    tamper.insert(spliced)
    tamper.set_head(5, chain[3].hash)
    broken_at(store, 3, "sealed without the key after keyed records", key=KEY)


def test_records_resealed_under_another_key_are_forged(store: Store, tamper: Any) -> None:
    """The chain re-sealed under an attacker's key (named by its own key id, or labelled with
    the real one) fails at record 1 under the real key."""
    evs = events(4)
    own = Sealer("attacker-key-1").seal(AuditHead(), evs)
    install(tamper, store, own)
    broken_at(store, 1, "sealed with another key", key=KEY)
    real_mode = Sealer(KEY).mode
    labelled = [dataclasses.replace(r, mode=real_mode) for r in own]
    install(tamper, store, labelled)
    broken_at(store, 1, "forged without the key", key=KEY)


ODD_MODES = [
    "SHA256",
    "Sha256",
    " sha256",
    "sha256 ",
    "sha-256",
    "sha256\n",
    "",
    "hmac-sha256",
    "hmac-sha256:",
    "HMAC-SHA256:{id}",
    "hmac-sha256:{id} ",
    " hmac-sha256:{id}",
    "hmac-sha256 :{id}",
    "hmac-sha256:{ID}",
    "hmac_sha256:{id}",
]


def test_a_mode_spelled_any_other_way_is_no_mode(store: Store, tamper: Any) -> None:
    """Records sealed (consistently) under a mode that only looks like ``sha256`` or the real
    key's mode, by case, spacing or spelling: never accepted under the key."""
    real_id = Sealer(KEY).mode.partition(":")[2]
    evs = events(3)
    for odd in ODD_MODES:
        mode = odd.format(id=real_id, ID=real_id.upper())
        sealer = Sealer()
        sealer.mode = mode  # an attacker's sealer: plain SHA-256 under a made-up label
        install(tamper, store, sealer.seal(AuditHead(), evs))
        result = verify(store, key=KEY)
        assert not result.ok, f"mode {mode!r} was accepted"
        assert result.broken is not None and result.broken.seq == 1, (mode, str(result))


@pytest.mark.parametrize("store", DATABASES, indirect=True)  # in memory, the head is the tail
def test_a_forged_head_is_detected(store: Store, tamper: Any) -> None:
    """The recorded head moved back behind the chain's end, or given another hash: found."""
    chain = sealed(2, 4)
    install(tamper, store, chain)
    tamper.set_head(4, chain[3].hash)
    broken_at(store, 5, "head was moved back", key=KEY)
    tamper.set_head(6, "0" * 64)
    broken_at(store, 6, "does not match", key=KEY)
    tamper.set_head(6, chain[5].hash)
    assert verify(store, key=KEY).ok


def test_a_checkpoint_of_a_keyed_chain_catches_its_downgrade(store: Store, tamper: Any) -> None:
    """A checkpoint of a keyed chain needs the key; the chain rewritten as plain fails against
    it at the checkpoint's record."""
    chain = sealed(2, 4)
    install(tamper, store, chain)
    anchor = checkpoint(store, key=KEY)
    assert anchor["mode"] == Sealer(KEY).mode and anchor["seq"] == 6
    assert verify(store, key=KEY, anchor=anchor).ok
    install(tamper, store, Sealer().seal(AuditHead(), events(6)))
    with pytest.raises(KeyRequired, match="checkpoint"):
        verify(store, key=[], anchor=anchor)
    broken_at(store, 6, "rewritten", key=KEY, anchor=anchor)
    with pytest.raises(ValueError, match="no keyed record"):
        checkpoint(store, key=KEY)


@settings(max_examples=60, deadline=None)
@given(
    plain=st.integers(0, 4),
    keyed=st.integers(0, 4),
    attack=st.one_of(st.none(), st.integers(0, 7)),
    tenant=st.sampled_from(["acme", "globex", None]),
)
def test_under_the_key_only_a_chain_keyed_to_its_end_verifies(
    plain: int, keyed: int, attack: int | None, tenant: str | None
) -> None:
    """Any chain of unkeyed then keyed records, its tail from any record re-sealed without the
    key (another tenant written in): verifies under the key exactly when untouched and keyed,
    or empty."""
    store = MemoryStore()
    chain = sealed(plain, keyed)
    total = plain + keyed
    rewritten = attack is not None and attack < total
    if rewritten:
        assert attack is not None
        head = AuditHead(seq=attack, hash=chain[attack - 1].hash) if attack else AuditHead()
        tail = [dataclasses.replace(_event(r), tenant=tenant) for r in chain[attack:]]
        chain = [*chain[:attack], *Sealer().seal(head, tail)]
    store._audit.extend(chain)
    result = verify(store, key=KEY)
    changed = rewritten and any(
        a.hash != b.hash for a, b in zip(chain, sealed(plain, keyed), strict=True)
    )
    assert result.ok == (not changed and (keyed > 0 or total == 0)), str(result)
    if result.ok and keyed:
        assert (result.keyed_from, result.unkeyed) == (plain + 1, plain)
