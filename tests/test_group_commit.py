"""Group commit on SQLite (``?commit=group&window_ms=N``): reads' events written in groups
within the window, everything else synchronous, and a process killed mid-stream leaving a
chain that verifies and a run that says it was interrupted."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.exceptions import ConfigError, StoreError, StoreGone
from corral.record.audit import verify
from corral.stores import open_store, sqlite_url
from corral.stores.base import BreakerState, Event, RunRecord
from corral.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

SPAWN = multiprocessing.get_context("spawn")
POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["kb.read", "ledger.write"], "specs": {"kb.read": {"cache": False}}},
        "writes": {"require_approval": False},
        "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
    }
)


def on_disk(path: Path, run_id: str) -> list[tuple[str, str]]:
    """(kind, tool) of a run's events as another process reads the file now."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute(
            "SELECT kind, json_extract(data, '$.tool') FROM corral_events "
            "WHERE run_id = ? ORDER BY id",
            (run_id,),
        ).fetchall()
    finally:
        conn.close()
    return [(kind, tool or "") for kind, tool in rows]


def tools(written: list[list[tuple[str, str]]], path: Path | None = None) -> list[Any]:
    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    @corral.tool(name="ledger.write", effect="write")
    def ledger_write(entry: str) -> str:
        if path is not None:  # what another process sees while the write runs
            written.append(on_disk(path, "r"))
        return "written " + entry

    return [kb_read, ledger_write]


def test_reads_are_held_then_written_within_the_window(tmp_path: Path) -> None:
    """A read's event is not in the file when the call returns, is within the window, and
    the store object that holds it reads it at once."""
    path = tmp_path / "g.db"
    with SQLiteStore(path, commit="group", window=0.2) as store:
        run = corral.Run(POLICY, tools=tools([]), store=store, run_id="r")
        run.call("kb.read", {"query": "q"})  # written with the run's start (not a read's)
        before = on_disk(path, "r")
        run.call("kb.read", {"query": "q2"})
        assert on_disk(path, "r") == before
        deadline = time.monotonic() + 10
        while on_disk(path, "r") == before:
            assert time.monotonic() < deadline, "the held event was never written"
            time.sleep(0.02)
        assert on_disk(path, "r") == [*before, ("tool_call", "kb.read")]
        run.call("kb.read", {"query": "again"})
        reads = [e for e in store.events("r") if e.kind == "tool_call"]
        assert len(reads) == 3


def test_a_write_is_authorized_on_disk_after_every_earlier_read_before_it_runs(
    tmp_path: Path,
) -> None:
    """While a write's tool runs, the file already holds the reads before it and the write's
    authorization, in order: a write never runs unaudited, whatever the window."""
    path = tmp_path / "g.db"
    seen: list[list[tuple[str, str]]] = []
    with SQLiteStore(path, commit="group", window=60.0) as store:
        run = corral.Run(POLICY, tools=tools(seen, path), store=store, run_id="r")
        run.call("kb.read", {"query": "a"})
        run.call("kb.read", {"query": "b"})
        run.call("ledger.write", {"entry": "e1"})
        (during,) = seen
        assert during[-3:] == [
            ("tool_call", "kb.read"),
            ("tool_call", "kb.read"),
            ("authorized", "ledger.write"),
        ]
        assert verify(store).ok


def test_closing_the_store_writes_what_it_holds(tmp_path: Path) -> None:
    """close() writes the events held: nothing is lost by a clean exit."""
    path = tmp_path / "g.db"
    store = SQLiteStore(path, commit="group", window=60.0)
    store.create_run(RunRecord(id="r"))
    store.append_events([Event(run_id="r", seq=1, kind="tool_call", at=1.0, data={"tool": "t"})])
    assert on_disk(path, "r") == []
    store.close()
    assert on_disk(path, "r") == [("tool_call", "t")]
    with SQLiteStore(path) as again:
        assert verify(again).ok


def test_a_group_that_cannot_be_written_fails_the_next_append_then_is_written(
    tmp_path: Path,
) -> None:
    """The file locked by another process past busy_timeout: the thread's group commit fails,
    the next append raises (fail closed); once free, the events are written in order."""
    path = tmp_path / "g.db"
    store = SQLiteStore(path, commit="group", window=0.01, busy_timeout=0.05)
    store.create_run(RunRecord(id="r"))
    blocker = sqlite3.connect(path, isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        store.append_events([Event(run_id="r", seq=1, kind="tool_call", at=1.0, data={})])
        deadline = time.monotonic() + 10
        while store._held_error is None:
            assert time.monotonic() < deadline, "the group commit never failed"
            time.sleep(0.01)
        with pytest.raises(StoreError, match="locked"):
            store.append_events([Event(run_id="r", seq=2, kind="tool_call", at=2.0, data={})])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    store.append_events([Event(run_id="r", seq=3, kind="tool_call", at=3.0, data={})])
    assert [e.seq for e in store.events("r")] == [1, 2, 3]
    assert verify(store).ok
    store.close()


def test_a_breaker_tripped_elsewhere_is_seen_within_the_window(tmp_path: Path) -> None:
    """Group commit reuses a breaker's row for the window: another process's change shows
    within it, the store object's own change at once."""
    path = tmp_path / "g.db"
    with SQLiteStore(path, commit="group", window=0.2) as grouped, SQLiteStore(path) as other:
        assert grouped.breaker("t", now=0.0).state == "closed"
        other.set_breaker("t", BreakerState(state="open", until=10**10))
        deadline = time.monotonic() + 10
        while grouped.breaker("t", now=0.0).state != "open":
            assert time.monotonic() < deadline, "the tripped breaker was never seen"
            time.sleep(0.02)
        grouped.set_breaker("t", BreakerState(state="closed"))
        assert grouped.breaker("t", now=0.0).state == "closed"


def test_a_removed_file_fails_the_next_append(tmp_path: Path) -> None:
    """The file removed with events held: the group is never written anywhere, and the next
    append raises StoreGone (the run stops), as every call does once the file is gone."""
    path = tmp_path / "g.db"
    store = SQLiteStore(path, commit="group", window=0.01)
    store.create_run(RunRecord(id="r"))
    store.append_events([Event(run_id="r", seq=1, kind="tool_call", at=1.0, data={})])
    os.remove(path)
    deadline = time.monotonic() + 10
    while store._held_error is None:
        assert time.monotonic() < deadline, "the group commit never failed"
        time.sleep(0.01)
    with pytest.raises(StoreGone):
        store.append_events([Event(run_id="r", seq=2, kind="tool_call", at=2.0, data={})])
    assert not path.exists()  # nothing made a new file there
    store.close()  # logs the events it could not write (every call since raised StoreGone)
    assert not path.exists()


def group_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "corral-sqlite-group-commit")


def test_the_thread_ends_with_its_store(tmp_path: Path) -> None:
    """One thread per store holding events; it ends when the store closes, or within a
    second when the store is dropped unclosed."""
    before = group_threads()
    stores = [SQLiteStore(tmp_path / f"{i}.db", commit="group", window=0.01) for i in range(3)]
    for store in stores:
        store.append_events([Event(run_id="r", seq=1, kind="tool_call", at=1.0, data={})])
    assert group_threads() == before + 3
    stores.pop().close()
    dropped = stores.pop()
    dropped.flush()
    del dropped, store
    gc.collect()  # a store is in reference cycles (its leases renew through it)
    deadline = time.monotonic() + 10
    while group_threads() > before + 1:
        assert time.monotonic() < deadline, "a thread outlived its store"
        time.sleep(0.05)
    stores.pop().close()
    while group_threads() > before:
        assert time.monotonic() < deadline, "a thread outlived its store"
        time.sleep(0.05)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_writes_only_its_own_events(tmp_path: Path) -> None:
    """Events held when the process forks are the parent's: the child writes its own only,
    the parent writes its own once."""
    path = tmp_path / "g.db"
    store = SQLiteStore(path, commit="group", window=60.0)
    store.create_run(RunRecord(id="parent"))
    store.create_run(RunRecord(id="child"))
    store.append_events([Event(run_id="parent", seq=1, kind="tool_call", at=1.0, data={})])
    pid = os.fork()
    if pid == 0:  # the child: its own event, written when it closes the store
        code = 1
        try:
            store.append_events([Event(run_id="child", seq=1, kind="tool_call", at=2.0, data={})])
            store.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.close()
    with SQLiteStore(path) as again:
        assert [e.seq for e in again.events("parent")] == [1]
        assert [e.seq for e in again.events("child")] == [1]
        assert verify(again).ok


def append_grouped(path: str, name: str, count: int, out: Any) -> None:
    """Child: append ``count`` reads' events to run ``name`` in group mode, then close."""
    store = SQLiteStore(path, commit="group", window=0.002)
    store.create_run(RunRecord(id=name))
    for seq in range(1, count + 1):
        store.append_events(
            [Event(run_id=name, seq=seq, kind="tool_call", at=time.time(), data={"n": seq})]
        )
    store.close()
    out.send(count)
    out.close()


def test_processes_in_group_mode_extend_one_chain(tmp_path: Path) -> None:
    """Three processes appending in groups to one file, a fourth synchronously: one chain
    that verifies, every event kept, each run's in order."""
    path = tmp_path / "g.db"
    SQLiteStore(path).close()
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(3)]
    procs = [
        SPAWN.Process(target=append_grouped, args=(str(path), f"p{i}", 400, send))
        for i, (_, send) in enumerate(pipes)
    ]
    for p in procs:
        p.start()
    with SQLiteStore(path) as sync:
        sync.create_run(RunRecord(id="sync"))
        for seq in range(1, 201):
            sync.append_events([Event(run_id="sync", seq=seq, kind="step", at=time.time())])
    try:
        assert [recv.recv() for recv, _ in pipes] == [400, 400, 400]
    finally:
        for p in procs:
            p.join(timeout=30)
    with SQLiteStore(path) as store:
        chain = verify(store)
        assert chain.ok and chain.checked == store.audit_head().seq
        for run_id, count in (("p0", 400), ("p1", 400), ("p2", 400), ("sync", 200)):
            # (a child's run, left running when it exited, is marked interrupted after them)
            kept = [e.seq for e in store.events(run_id) if e.kind != "interrupted"]
            assert kept == list(range(1, count + 1))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("commit=batch", "commit: must be each or group"),
        ("commit=group&window_ms=0", "window: must be over 0"),
        ("commit=group&window_ms=soon", "window_ms must be a number"),
        ("window_ms=5", "window_ms applies only with commit=group"),
    ],
)
def test_bad_group_commit_options_are_config_errors(
    tmp_path: Path, query: str, message: str
) -> None:
    """A commit option the store cannot use says why."""
    with pytest.raises(ConfigError, match=message):
        open_store(f"{sqlite_url(tmp_path / 'x.db')}?{query}")


def test_the_url_names_the_mode_and_the_window(tmp_path: Path) -> None:
    """sqlite:///PATH?commit=group&window_ms=5 opens a store committing in 5 ms groups."""
    store = open_store(f"{sqlite_url(tmp_path / 'x.db')}?commit=group&window_ms=5")
    try:
        assert isinstance(store, SQLiteStore)
        assert (store.commit, store.window) == ("group", 0.005)
        assert "commit='group'" in repr(store)
    finally:
        store.close()


# -- killed mid-stream ------------------------------------------------------------------
def call_until_killed(url: str, run_id: str, pause_at: int, out: Any) -> None:
    """Child: reads, and a write every 25th call, reporting each read returned and each
    write as its tool runs; at ``pause_at`` reads (0: never) it stops and waits."""
    reads = 0

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer for " + query

    @corral.tool(name="ledger.write", effect="write")
    def ledger_write(entry: str) -> str:
        out.send(("write", reads))  # the authorization is on disk by now
        return "written " + entry

    run = corral.Run(POLICY, tools=[kb_read, ledger_write], store=url, run_id=run_id)
    while True:
        run.call("kb.read", {"query": f"q{reads % 8}"})
        reads += 1
        out.send(("read", reads))
        if reads % 25 == 0:
            run.call("ledger.write", {"entry": f"e{reads}"})
        if reads == pause_at:
            out.send(("paused", reads))
            time.sleep(600)


def kill_child(url: str, run_id: str, *, pause_at: int, until: int) -> tuple[int, list[int]]:
    """Run call_until_killed in a spawned process and SIGKILL it once it paused (or, with
    no pause, once ``until`` reads returned); the reads returned and the writes started."""
    recv, send = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=call_until_killed, args=(url, run_id, pause_at, send))
    child.start()
    send.close()
    reads, writes = 0, []
    try:
        while True:
            what, n = recv.recv()
            if what == "read":
                reads = n
            elif what == "write":
                writes.append(n)
            if (what == "paused") or (not pause_at and reads >= until):
                break
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=20)
        with contextlib.suppress(EOFError):  # what the child sent before it died
            while recv.poll():
                what, n = recv.recv()
                if what == "read":
                    reads = n
                elif what == "write":
                    writes.append(n)
    finally:
        recv.close()
        if child.is_alive():
            child.kill()
    assert child.exitcode == -signal.SIGKILL
    return reads, writes


def check_after_kill(path: Path, run_id: str, reads: int, writes: list[int]) -> tuple[int, int]:
    """What must hold however the kill fell: the chain verifies, the run says it was
    interrupted, its events are numbered without a gap, every write that ran is
    authorized, and every read before a write is kept. The reads and writes kept."""
    with SQLiteStore(path) as store:
        chain = verify(store)
        assert chain.ok and chain.checked == store.audit_head().seq
        victim = store.get_run(run_id)
        assert victim is not None and victim.status == "interrupted"
        events = store.events(run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[-1].kind == "interrupted" and "no longer running" in events[-1].data["why"]
        kept_reads = sum(1 for e in events if e.kind == "tool_call" and e.data["tool"] == "kb.read")
        authorized = [e for e in events if e.kind == "authorized"]
    assert len(authorized) >= len(writes)
    assert max(writes, default=0) <= kept_reads <= reads
    return kept_reads, len(authorized)


def test_a_process_killed_with_reads_held_loses_only_that_tail_and_shows_interrupted(
    tmp_path: Path,
) -> None:
    """kill -9 with reads held (a window of a minute): the reads since the last write are
    lost, the chain still verifies and the run is interrupted, its events without a gap."""
    path = tmp_path / "g.db"
    url = f"{sqlite_url(path)}?commit=group&window_ms=60000"
    reads, writes = kill_child(url, "victim", pause_at=110, until=0)
    assert reads == 110 and writes == [25, 50, 75, 100]
    kept, authorized = check_after_kill(path, "victim", reads, writes)
    print(f"\nreads returned {reads}, kept {kept}; writes {len(writes)}, authorized {authorized}")
    assert kept == 100 < reads  # the lost tail: the ten reads after the last write


def test_a_process_killed_mid_stream_leaves_a_chain_that_verifies(tmp_path: Path) -> None:
    """kill -9 at full speed with a 20 ms window, then again on the same file: every
    invariant holds both times, and the second process's chain extends the first's."""
    path = tmp_path / "g.db"
    url = f"{sqlite_url(path)}?commit=group&window_ms=20"
    for run_id in ("first", "second"):
        reads, writes = kill_child(url, run_id, pause_at=0, until=300)
        kept, _ = check_after_kill(path, run_id, reads, writes)
        print(f"\n{run_id}: reads returned {reads}, kept {kept}; writes {len(writes)}")
    with SQLiteStore(path) as store:
        assert [e.kind for e in store.events("first")][-1] == "interrupted"
