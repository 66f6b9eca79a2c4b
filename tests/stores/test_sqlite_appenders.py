"""Appenders sharing one SQLite file: each store object seals an append after the head it
last wrote and checks that head inside the write transaction, reading the head only when
another connection moved it. Whatever the interleaving — store objects of one process,
threads sharing one store object, processes with threads of their own, kill switches and
interrupted runs appending through the same chain — the file holds one chain that verifies,
with every event kept in each run's order."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.record.audit import verify
from corral.stores.base import Event, KillSwitchState, RunRecord
from corral.stores.sqlite import SQLiteStore

SPAWN = multiprocessing.get_context("spawn")


def _event(run_id: str, seq: int) -> Event:
    return Event(run_id=run_id, seq=seq, kind="tool_call", at=time.time(), data={"n": seq})


def _kept(store: SQLiteStore, run_id: str) -> list[int]:
    return [e.seq for e in store.events(run_id) if e.kind != "interrupted"]


def _verified(store: SQLiteStore) -> int:
    result = verify(store)
    assert result.ok, result.broken
    assert result.checked == store.audit_head().seq
    return result.checked


# One step of an interleaving: (which store object, what it does, how many events).
STEPS = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(["append", "switch", "flush"]), st.integers(1, 3)),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS, grouped=st.lists(st.booleans(), min_size=3, max_size=3))
def test_store_objects_interleaving_on_one_file_make_one_chain(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, str, int]], grouped: list[bool]
) -> None:
    """Three store objects on one file (each committing every append or in groups) append,
    set kill switches (audited) and flush in any order: one chain that verifies, each
    object's events all there and in order, the same as a single appender would leave."""
    path = tmp_path_factory.mktemp("interleave") / "c.db"
    stores = [
        SQLiteStore(path, commit="group", window=60) if g else SQLiteStore(path) for g in grouped
    ]
    sent = [0, 0, 0]
    switches = 0
    try:
        for i, store in enumerate(stores):
            store.create_run(RunRecord(id=f"r{i}"))
        for who, what, count in steps:
            store = stores[who]
            if what == "append":
                events = [_event(f"r{who}", sent[who] + k + 1) for k in range(count)]
                sent[who] += count
                store.append_events(events)
            elif what == "switch":
                switches += 1
                audit = Event(run_id="", seq=switches, kind="kill_switch", at=time.time())
                store.set_kill_switch(
                    KillSwitchState(scope="tool", target=f"t{switches}"), audit=audit
                )
            else:
                store.flush()
        for store in stores:
            store.flush()
        checked = _verified(stores[0])
        assert checked == sum(sent) + switches
        for i in range(3):
            assert _kept(stores[0], f"r{i}") == list(range(1, sent[i] + 1))
    finally:
        for store in stores:
            store.close()


def _threads_appending(store: SQLiteStore, prefix: str, threads: int, count: int) -> None:
    """``threads`` threads share ``store``, each appending ``count`` events to a run of its own."""
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        run_id = f"{prefix}-t{n}"
        store.create_run(RunRecord(id=run_id))
        start.wait()
        for seq in range(1, count + 1):
            store.append_events([_event(run_id, seq)])

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def append_with_threads(path: str, name: str, grouped: bool, start: Any, out: Any) -> None:
    """Child: three threads sharing one store object append 100 events each."""
    store = SQLiteStore(path, commit="group", window=0.002) if grouped else SQLiteStore(path)
    try:
        start.wait()
        _threads_appending(store, name, 3, 100)
    finally:
        store.close()
    out.send(300)
    out.close()


def test_threads_sharing_a_store_object_make_one_chain(tmp_path: Path) -> None:
    """Four threads append through one store object while another object on the same file
    appends too: one chain, every thread's events kept in order."""
    path = tmp_path / "t.db"
    with SQLiteStore(path) as store, SQLiteStore(path) as other:
        other.create_run(RunRecord(id="other"))
        side = threading.Thread(
            target=lambda: [other.append_events([_event("other", s)]) for s in range(1, 151)]
        )
        side.start()
        _threads_appending(store, "main", 4, 150)
        side.join()
        assert _verified(store) == 4 * 150 + 150
        for run_id in ["other", *(f"main-t{n}" for n in range(4))]:
            assert _kept(store, run_id) == list(range(1, 151))


def test_processes_with_threads_each_and_grouped_make_one_chain(tmp_path: Path) -> None:
    """Four processes (two committing every append, two in groups), each with three threads
    sharing its store object, append to one file at once: one chain that verifies, every
    thread's events kept and in order."""
    path = tmp_path / "p.db"
    SQLiteStore(path).close()
    start = SPAWN.Barrier(4)
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(4)]
    procs = [
        SPAWN.Process(target=append_with_threads, args=(str(path), f"p{i}", i >= 2, start, send))
        for i, (_, send) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    for _, send in pipes:
        send.close()
    try:
        assert [recv.recv() for recv, _ in pipes] == [300] * 4
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    with SQLiteStore(path) as store:
        assert _verified(store) >= 1200  # and the children's runs' interrupted events
        for i in range(4):
            for n in range(3):
                assert _kept(store, f"p{i}-t{n}") == list(range(1, 101))


def test_an_append_after_another_connection_moved_the_head_follows_it(tmp_path: Path) -> None:
    """A store object whose last known head is stale (another connection appended, a run was
    marked interrupted) seals its next append after the head in the file, not the one it
    remembers."""
    path = tmp_path / "h.db"
    with SQLiteStore(path) as a, SQLiteStore(path) as b:
        a.create_run(RunRecord(id="a"))
        a.append_events([_event("a", 1)])
        b.append_events([_event("b", 1), _event("b", 2)])
        a.append_events([_event("a", 2)])
        a.append_events([_event("a", 3)])
        b.append_events([_event("b", 3)])
        records = a.audit_records()
        assert [(r.run_id, r.event_seq) for r in records] == [
            ("a", 1),
            ("b", 1),
            ("b", 2),
            ("a", 2),
            ("a", 3),
            ("b", 3),
        ]
        assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
        assert _verified(a) == 6
