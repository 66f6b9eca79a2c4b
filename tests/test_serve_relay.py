"""Replicas behind any load balancer: a run's requests may reach any replica (round robin
here); each is relayed to the replica holding the run and answered as the holder answers.
A replica that dies has its runs taken over by the next replica asked, resumed with what
they had used (their per-run budgets hold across the take-over); a holder that cannot be
reached but may be alive is never taken from (503, retryable).

In this process: replicas as uvicorn servers on real sockets over one SQLite file (each its
own store object, as separate processes would have). In processes: two ``corral serve``
over PostgreSQL, one SIGKILLed.
"""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral
from corral.controls.keys import create_key
from corral.server import create_app
from corral.server.relay import RELAYED
from corral.stores.sqlite import SQLiteStore
from crash import pg as crash_pg
from serving import free_port, serve_process

POLICY = """\
tools:
  allow: [kb.read]
  specs:
    kb.read:
      effect: read
      cost_usd: 0.01
      cache: false
      args_schema: {type: object, properties: {q: {type: string}}, required: [q]}
budgets: {max_tool_calls: 6}
"""


@dataclass
class Replica:
    url: str
    store: SQLiteStore
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def replica(db: Path, **options: Any) -> Iterator[Replica]:
    """A server over ``db`` on a port of its own, with its address known to it."""
    import uvicorn

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = SQLiteStore(db)
    policies = {"support": corral.Policy.from_yaml(POLICY)}
    app = create_app(store, policies=policies, address=url, **options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    served = Replica(url, store, server, thread)
    try:
        yield served
    finally:
        served.stop()
        store.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[list[Replica], str]]:
    """Three replicas over one SQLite file, and an agent key of tenant acme."""
    db = tmp_path / "corral.db"
    with SQLiteStore(db) as setup:
        token = create_key(setup, tenant="acme", role="agent", name="bot", actor="test").token
    with ExitStack() as stack:
        yield [stack.enter_context(replica(db)) for _ in range(3)], token


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_a_run_driven_through_every_replica_in_turn_is_one_run(
    fleet: tuple[list[Replica], str],
) -> None:
    replicas, token = fleet
    clients = [_client(r.url, token) for r in replicas]
    turn = itertools.cycle(clients)
    started = next(turn).post("/v1/runs", json={"policy": "support", "task": "t"})
    assert started.status_code == 201, started.text
    run_id = started.json()["run_id"]
    assert replicas[0].store.get_run(run_id).served_by == replicas[0].url  # type: ignore[union-attr]

    decisions = []
    for i in range(8):  # max_tool_calls 6: the seventh is refused, wherever it is asked
        asked = next(turn).post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": f"q{i}"}}
        )
        assert asked.status_code == 200, asked.text
        answer = asked.json()
        decisions.append(answer["decision"])
        if answer["decision"] != "allow":
            break
        reported = next(turn).post(
            f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report", json={"output": "up"}
        )
        assert reported.json()["decision"] == "ok", reported.text
    assert decisions == ["allow"] * 6 + ["stop"]
    ended = next(turn).post(f"/v1/runs/{run_id}/end", json={"answer": "done"})
    assert ended.json()["result"]["usage"]["tool_calls"] == 6
    record = replicas[2].store.get_run(run_id)
    assert (
        record is not None and record.status == "stopped" and record.stop_reason == "max_tool_calls"
    )
    for c in clients:
        c.close()


def test_a_relayed_request_is_never_relayed_again(fleet: tuple[list[Replica], str]) -> None:
    replicas, token = fleet
    with _client(replicas[0].url, token) as first, _client(replicas[1].url, token) as second:
        run_id = first.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        relayed = second.get(f"/v1/runs/{run_id}/tools", headers={RELAYED: "http://elsewhere"})
        assert relayed.status_code == 409
        assert relayed.json()["error"]["code"] == "run_not_held"
        direct = second.get(f"/v1/runs/{run_id}/tools")
        assert direct.status_code == 200 and direct.json()["tools"]


def test_unknown_and_ended_runs_answer_the_same_on_every_replica(
    fleet: tuple[list[Replica], str],
) -> None:
    replicas, token = fleet
    with _client(replicas[0].url, token) as first, _client(replicas[1].url, token) as second:
        assert second.get("/v1/runs/run_nope/tools").status_code == 404
        run_id = first.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        ended = first.post(f"/v1/runs/{run_id}/end", json={"answer": "x"}).json()
        late = second.post(f"/v1/runs/{run_id}/steps")
        assert late.status_code == 409 and late.json()["error"]["code"] == "run_ended"
        again = second.post(f"/v1/runs/{run_id}/end", json={"answer": "x"})
        assert again.status_code == 200 and again.json() == ended  # the holder remembers


def _point_at(db: Path, run_id: str, served_by: str, *, heartbeat: float, node: str) -> None:
    """Make ``run_id``'s record say it is running, held by ``served_by`` on ``node``, last
    heard of at ``heartbeat`` (a holder that died without ending its runs, elsewhere)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE corral_runs SET served_by = ?, heartbeat_at = ?, owner_node = ?, "
            "owner_pid = 1, status = 'running', ended_at = NULL, stop_reason = NULL "
            "WHERE id = ?",
            (served_by, heartbeat, node, run_id),
        )


def test_a_holder_that_may_be_alive_is_never_taken_from(
    fleet: tuple[list[Replica], str], tmp_path: Path
) -> None:
    replicas, token = fleet
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _client(replicas[0].url, token) as first, _client(replicas[1].url, token) as second:
        run_id = first.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        replicas[0].stop()  # the run's holder stops answering...
        _point_at(tmp_path / "corral.db", run_id, nobody, heartbeat=time.time(), node="far-away")
        refused = second.post(f"/v1/runs/{run_id}/steps")  # ...but its heartbeat is fresh
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "run_holder_unreachable"
        assert refused.headers["retry-after"] == "5"
        assert replicas[1].store.get_run(run_id).served_by == nobody  # type: ignore[union-attr]


def test_a_gone_holders_run_is_taken_over_with_what_it_used(
    fleet: tuple[list[Replica], str], tmp_path: Path
) -> None:
    replicas, token = fleet
    nobody = f"http://127.0.0.1:{free_port()}"
    with _client(replicas[0].url, token) as first:
        run_id = first.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        for i in range(4):
            ok = _read(first, run_id, f"q{i}")
            assert ok["decision"] == "ok"
        lost = first.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "lost"}}
        ).json()
        assert lost["decision"] == "allow"  # authorized, never reported: lost with its holder
    # The holder stops: its runs end, and the call it authorized counts at what it held (the
    # caller had its ticket: the action may have happened), in the run as in the windows.
    replicas[0].stop()
    _point_at(tmp_path / "corral.db", run_id, nobody, heartbeat=time.time() - 3600, node="gone")

    # Two replicas asked at once: one takes the run over, the other relays to it.
    with _client(replicas[1].url, token) as b, _client(replicas[2].url, token) as c:
        with ThreadPoolExecutor(2) as pool:
            steps = list(pool.map(lambda h: h.post(f"/v1/runs/{run_id}/steps"), [b, c]))
        assert [s.status_code for s in steps] == [200, 200], [s.text for s in steps]
        holder = replicas[1].store.get_run(run_id).served_by  # type: ignore[union-attr]
        assert holder in (replicas[1].url, replicas[2].url)
        assert steps[-1].json()["usage"]["tool_calls"] == 5  # what the lost holder used
        unknown = b.post(f"/v1/runs/{run_id}/tool-calls/{lost['ticket']}/report", json={})
        assert unknown.status_code == 404
        # max_tool_calls 6 holds across the take-over: one more, then a stop.
        assert _read(b, run_id, "a")["decision"] == "ok"
        assert _read(c, run_id, "b")["decision"] == "stop"


def _read(http: httpx.Client, run_id: str, q: str) -> dict[str, Any]:
    body = {"tool": "kb.read", "arguments": {"q": q}}
    answer: dict[str, Any] = http.post(f"/v1/runs/{run_id}/tool-calls", json=body).json()
    if answer["decision"] == "allow":
        report = f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report"
        return dict(http.post(report, json={"output": "up"}).json())
    return answer


def test_a_run_under_a_policy_the_taker_lacks_is_refused_clearly(tmp_path: Path) -> None:
    db = tmp_path / "corral.db"
    with SQLiteStore(db) as setup:
        token = create_key(setup, tenant="acme", role="agent", name="bot", actor="test").token
    with replica(db) as first:
        with _client(first.url, token) as http:
            run_id = http.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        first.stop()
        _point_at(db, run_id, first.url, heartbeat=time.time() - 3600, node="gone")
        import uvicorn

        port = free_port()
        store = SQLiteStore(db)
        app = create_app(store, policies={}, address=f"http://127.0.0.1:{port}")
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            with _client(f"http://127.0.0.1:{port}", token) as other:
                refused = other.post(f"/v1/runs/{run_id}/steps")
            assert refused.status_code == 409
            assert "same --policy-dir" in refused.json()["error"]["message"]
        finally:
            server.should_exit = True
            thread.join(10)
            store.close()


# -- corral serve processes over PostgreSQL ------------------------------------------------


@pytest.mark.slow
def test_serve_processes_relay_and_take_over_a_killed_replicas_run(tmp_path: Path) -> None:
    pg = crash_pg()
    url = pg.require_postgres()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "support.yaml").write_text(POLICY)
    with pg.fresh_store(url) as store:
        db = f"{url}?schema={store.schema}"
        token = create_key(store, tenant="acme", role="agent", name="bot", actor="test").token
        started = [serve_process(db, tmp_path / "policies") for _ in range(2)]
        (a_url, _), (b_url, b) = started
        try:
            with _client(a_url, token) as via_a, _client(b_url, token) as via_b:
                run_id = via_b.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
                # Round robin: every other request reaches the replica that does not hold it.
                for i, (ask, tell) in enumerate([(via_a, via_b), (via_b, via_a), (via_a, via_a)]):
                    answer = ask.post(
                        f"/v1/runs/{run_id}/tool-calls",
                        json={"tool": "kb.read", "arguments": {"q": f"q{i}"}},
                    ).json()
                    assert answer["decision"] == "allow", answer
                    done = tell.post(
                        f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report",
                        json={"output": "up"},
                    ).json()
                    assert done["decision"] == "ok", done
                b.send_signal(signal.SIGKILL)  # the holder dies (same node: its pid is gone)
                b.wait(10)
                step = via_a.post(f"/v1/runs/{run_id}/steps")
                assert step.status_code == 200, step.text
                assert step.json()["usage"]["tool_calls"] == 3
                assert store.get_run(run_id).served_by == a_url  # type: ignore[union-attr]
                assert _read(via_a, run_id, "more")["decision"] == "ok"
                ended = via_a.post(f"/v1/runs/{run_id}/end", json={"answer": "ok"}).json()
                assert ended["result"]["usage"]["tool_calls"] == 4
        finally:
            for _, proc in started:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for _, proc in started:
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
