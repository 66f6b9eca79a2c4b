"""``take_run``: a server taking over a run it saw held by ``was`` — only from that holder,
only a run not ended, exactly one winner when several try at once; every backend."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pg import drop_schema, new_schema, require_postgres

from conftest import POSTGRES_URL
from corral.stores import Store
from corral.stores.base import RunRecord
from corral.stores.owner import RunOwner
from corral.stores.postgres import PostgresStore
from corral.stores.sqlite import SQLiteStore


def test_a_run_is_taken_only_from_the_holder_seen(store: Store) -> None:
    store.create_run(RunRecord(id="r1", served_by="http://a:1"))
    assert store.get_run("r1").served_by == "http://a:1"  # type: ignore[union-attr]
    assert not store.take_run("r1", was="http://b:2", now="http://c:3")
    assert not store.take_run("r1", was=None, now="http://c:3")
    assert store.take_run("r1", was="http://a:1", now="http://b:2")
    record = store.get_run("r1")
    assert record is not None and record.served_by == "http://b:2"
    assert record.owner == RunOwner.current() and record.status == "running"
    assert not store.take_run("r1", was="http://a:1", now="http://c:3")  # taken already


def test_a_run_never_served_is_taken_from_none(store: Store) -> None:
    store.create_run(RunRecord(id="r1"))
    assert store.take_run("r1", was=None, now="http://a:1")
    assert store.get_run("r1").served_by == "http://a:1"  # type: ignore[union-attr]


def test_an_interrupted_run_is_taken_and_running_again(store: Store) -> None:
    store.create_run(RunRecord(id="r1", served_by="http://a:1"))
    store.update_run("r1", status="interrupted", ended_at=5.0)
    assert store.take_run("r1", was="http://a:1", now="http://b:2")
    record = store.get_run("r1")
    assert record is not None and record.status == "running" and record.ended_at is None


@pytest.mark.parametrize("status", ["ok", "stopped", "error"])
def test_an_ended_run_is_never_taken(store: Store, status: str) -> None:
    store.create_run(RunRecord(id="r1", served_by="http://a:1"))
    store.update_run("r1", status=status, ended_at=5.0)
    assert not store.take_run("r1", was="http://a:1", now="http://b:2")
    assert not store.take_run("missing", was=None, now="http://b:2")


def test_served_by_survives_updates(store: Store) -> None:
    store.create_run(RunRecord(id="r1", served_by="http://a:1"))
    store.update_run("r1", status="running", usage={"steps": 1})
    assert store.get_run("r1").served_by == "http://a:1"  # type: ignore[union-attr]
    store.update_run("r1", served_by="http://z:9")
    assert store.get_run("r1").served_by == "http://z:9"  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_one_of_many_takers_wins(backend: str, tmp_path: Path) -> None:
    """Eight servers (each its own store object) take the same run at once: one wins."""
    if backend == "postgres":
        url = require_postgres(POSTGRES_URL)
        schema = new_schema()

        def open_store() -> Store:
            return PostgresStore(url, schema=schema)
    else:

        def open_store() -> Store:
            return SQLiteStore(tmp_path / "corral.db")

    stores = [open_store() for _ in range(8)]
    try:
        stores[0].create_run(RunRecord(id="r1", served_by="http://dead:1"))
        won: list[int] = []
        start = threading.Barrier(len(stores))

        def take(i: int) -> None:
            start.wait()
            if stores[i].take_run("r1", was="http://dead:1", now=f"http://s{i}:1"):
                won.append(i)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1
        assert stores[0].get_run("r1").served_by == f"http://s{won[0]}:1"  # type: ignore[union-attr]
    finally:
        for s in stores:
            s.close()
        if backend == "postgres":
            drop_schema(url, schema)
