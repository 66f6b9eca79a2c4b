"""Exactly-once writes across crashes: a process running a governed write is SIGKILLed at
each point of the write, many times, on SQLite and PostgreSQL; the side effect is counted
outside it (an fsync'd file). No key ever executes twice; a key killed before its claim
runs exactly once after a restart; one killed after its claim is ``unknown`` once its
lease lapses, is never run again on a guess, and is settled by the tool's ``reconcile``
hook or ``corral idempotency resolve``. Two processes racing one key: one execution."""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.stores import Store
from corral.stores.sqlite import SQLiteStore
from crash import POINTS, POLICY, effects, in_child, pay, pay_and_die, pay_tool, quick_leases
from crash import pg as crash_pg

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL")

LEASE = 0.4
#: Kills per point (SQLite, PostgreSQL): 5 points x 24 = 120 on SQLite, 5 x 4 = 20 on PostgreSQL.
PER_POINT = {"sqlite": 24, "postgres": 4}
RACES = {"sqlite": 20, "postgres": 5}


#: Leases of 0.4 s renewed every 0.1 s, so a dead process's claim lapses quickly: every
#: run of this module is given them.
QUICK = quick_leases(LEASE)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Store, str]]:
    """(name, store, URL) of a fresh store of each durable backend."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        sqlite = SQLiteStore(path)
        try:
            yield "sqlite", sqlite, f"sqlite:///{path}"
        finally:
            sqlite.close()
        return
    url = crash_pg().require_postgres()
    with crash_pg().fresh_store(url) as pg:
        yield "postgres", pg, f"{url}?schema={pg.schema}"


def test_sigkill_at_every_point_of_a_write_never_runs_a_key_twice(backend, tmp_path):
    """Killed at each point, restarted, reconciled or resolved: every key's effect happens once."""
    name, store, url = backend
    path = tmp_path / "effects.log"
    killed: list[tuple[str, str]] = []
    for i in range(PER_POINT[name]):
        for point in POINTS:
            order = f"{point}-{i}"
            assert pay_and_die(store, path, order, point, services=QUICK) == -signal.SIGKILL
            killed.append((point, order))
    iterations = len(killed)
    print(f"\nSIGKILL iterations on {name}: {iterations} ({len(POINTS)} points)")

    # What the crashes left: the effect happened only where the tool got past it.
    seen = Counter(effects(path))
    for point, order in killed:
        assert seen[order] == (1 if point in ("after_tool", "before_outcome") else 0), order

    time.sleep(LEASE + 0.2)  # the dead processes' leases lapse
    claims = store.list_claims(now=time.time())
    assert len(claims) == iterations - PER_POINT[name]  # every claim made, none for before_claim
    assert {c.status for c in claims} == {"unknown"}

    # Restart without a reconcile hook: a key killed before its claim runs, once; the others
    # stop with outcome_unknown and are not run again.
    unknown: dict[str, str] = {}
    for point, order in killed:
        result = pay(store, path, order, services=QUICK)
        if point == "before_claim":
            assert result.status == "ok", result.stop
        else:
            assert (result.stop_reason, result.stop.why) == ("tool_error", "outcome_unknown")
            assert result.stop.retryable is False
            unknown[order] = result.stop.extra["key"]
    seen = Counter(effects(path))
    for point, order in killed:
        assert seen[order] == (0 if point in ("after_claim", "inside_tool") else 1), order

    # Settle: the operator resolves every fourth key by hand, the reconcile hook the rest.
    runner = CliRunner()
    for n, (point, order) in enumerate(killed):
        if point == "before_claim":
            continue
        if n % 4 == 0:
            happened = order in effects(path)
            outcome = "succeeded" if happened else "not_executed"
            args = ["idempotency", "resolve", unknown[order], "--outcome", outcome, "--db", url]
            args += ["--output", f'"paid {order}"'] if happened else []
            done = runner.invoke(app, [*args, "--as", "ops", "--reason", "checked the ledger"])
            assert done.exit_code == 0, done.output
            result = pay(store, path, order, services=QUICK)
        else:
            result = pay(store, path, order, reconcile=True, services=QUICK)
        assert result.status == "ok", (point, order, result.stop)

    # Every key executed exactly once; asking again replays, never runs.
    for _point, order in killed:
        assert pay(store, path, order, services=QUICK).status == "ok"
    seen = Counter(effects(path))
    assert {order for _, order in killed} == set(seen)
    assert set(seen.values()) == {1}
    assert store.list_claims(now=time.time(), status="unknown") == []


def test_two_processes_racing_one_key_execute_it_once(backend, tmp_path):
    """Two processes released together call the same write: one runs it, the other replays."""
    name, store, _url = backend
    path = tmp_path / "effects.log"
    for i in range(RACES[name]):
        order = f"race-{i}"
        gate_r, gate_w = os.pipe()

        def work(order: str = order, gate: int = gate_r) -> None:
            os.read(gate, 1)
            tool = pay_tool(path, sleep=0.02)
            with corral.Run(POLICY, tools=[tool], store=store, services=QUICK) as run:
                assert run.call("pay.send", {"order": order}) == f"paid {order}"

        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    work()
                except BaseException:
                    traceback.print_exc()
                    code = 3
                os._exit(code)
            pids.append(pid)
        os.write(gate_w, b"go")
        codes = [os.waitpid(pid, 0)[1] for pid in pids]
        os.close(gate_r)
        os.close(gate_w)
        assert codes == [0, 0]
    seen = Counter(effects(path))
    assert len(seen) == RACES[name] and set(seen.values()) == {1}


def test_a_process_killed_at_a_random_moment_never_runs_a_key_twice(tmp_path):
    """Kills at random moments of a stream of writes; after reconciling, each ran once."""
    store = SQLiteStore(tmp_path / "corral.db")
    path = tmp_path / "effects.log"
    rng = random.Random(7)
    orders = [f"o-{n}" for n in range(60)]
    done = 0
    killed = 0
    try:
        while done < len(orders):
            batch = orders[done : done + 6]

            def work(batch: list[str] = batch) -> None:
                for order in batch:
                    pay(store, path, order, reconcile=True, services=QUICK)

            pid = os.fork()
            if pid == 0:
                try:
                    work()
                finally:
                    os._exit(0)
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(pid, signal.SIGKILL)
            killed += os.WIFSIGNALED(os.waitpid(pid, 0)[1])
            done += len(batch)
        assert killed > 0  # some children died mid-stream (else the test proves nothing)
        assert max(Counter(effects(path)).values(), default=1) == 1
        time.sleep(LEASE + 0.2)
        for order in orders:
            assert pay(store, path, order, reconcile=True, services=QUICK).status == "ok"
        seen = Counter(effects(path))
        assert set(seen) == set(orders) and set(seen.values()) == {1}
    finally:
        store.close()


def test_in_child_reports_a_sigkill():
    """The helper tells a killed child from one that exited (so the suite cannot pass vacuously)."""
    assert in_child(lambda: os.kill(os.getpid(), signal.SIGKILL)) == -signal.SIGKILL
    assert in_child(lambda: None) == 0
