"""``corral serve``: the control plane's HTTP API over real sockets (uvicorn in a thread,
httpx as the client) on a real SQLite file — keys and roles, tenants kept apart, approvals
decided over HTTP releasing a governed agent that waits for them, the kill switch reaching
a running agent, the audit chain, the error shape, the body cap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

uvicorn = pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral  # noqa: E402
from corral.server import create_app  # noqa: E402
from corral.stores.base import ApprovalRecord, Store  # noqa: E402
from corral.stores.sqlite import SQLiteStore  # noqa: E402
from serving import Served, file_request, serving  # noqa: E402


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = SQLiteStore(str(tmp_path / "corral.db"))
    try:
        with serving(store) as running:
            yield running
    finally:
        store.close()


def _read() -> corral.Tool:
    return corral.tool(lambda q: f"read {q}", name="kb.read", effect="read")


def _runs(store: Store) -> dict[str, str]:
    """One finished governed run per tenant; their ids."""
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    ids = {}
    for tenant in ("acme", "beta"):
        with corral.Run(policy, tools=[_read()], store=store, tenant=tenant, agent="bot") as run:
            run.call("kb.read", {"q": tenant})
        ids[tenant] = run.id
    return ids


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


# -- health and keys ----------------------------------------------------------------------
def test_health_needs_no_key_and_every_v1_endpoint_needs_one(served: Served) -> None:
    with served.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready"}
        for method, path in ENDPOINTS:
            where = path.format(run="run_x", approval="apr_x", ticket="tkt_x", model_call="mdl_x")
            response = http.request(method, where, json={})
            _error(response, 401, "invalid_key")
            assert response.headers["www-authenticate"] == "Bearer"
        forged = served.keys["root"][:-1] + ("A" if served.keys["root"][-1] != "A" else "B")
        for token in (forged, "crl_" + "0" * 16 + "_" + "x" * 43, "nonsense", served.keys["root"]):
            response = http.get("/v1/runs", headers={"Authorization": f"Bearer {token}"})
            if token == served.keys["root"]:
                assert response.status_code == 200
            else:
                assert _error(response, 401, "invalid_key") == "invalid API key"


def test_a_revoked_key_is_refused_at_once(served: Served) -> None:
    from corral.controls.keys import authenticate, revoke_key

    key_id = authenticate(served.store, served.keys["acme-agent"]).key_id
    with served.client("acme-agent") as http:
        assert http.get("/v1/runs").status_code == 200
        assert revoke_key(served.store, key_id, actor="test")
        _error(http.get("/v1/runs"), 401, "invalid_key")


# -- runs ---------------------------------------------------------------------------------
def test_runs_and_timelines_are_kept_to_the_keys_tenant(served: Served) -> None:
    ids = _runs(served.store)
    with served.client("acme-agent") as http:
        listed = http.get("/v1/runs").json()
        assert [r["run_id"] for r in listed["runs"]] == [ids["acme"]]
        assert listed["runs"][0]["tool_calls"] == 1 and listed["runs"][0]["status"] == "ok"
        _error(http.get("/v1/runs", params={"tenant": "beta"}), 403, "forbidden")
        _error(http.get(f"/v1/runs/{ids['beta']}"), 404, "not_found")
        _error(http.get(f"/v1/runs/{ids['beta']}/timeline"), 404, "not_found")
        run = http.get(f"/v1/runs/{ids['acme']}").json()["run"]
        assert run["tenant"] == "acme" and run["usage"]["tool_calls"] == 1
        timeline = http.get(f"/v1/runs/{ids['acme']}/timeline").json()["timeline"]
        kinds = [e["kind"] for e in timeline]
        assert kinds[0] == "run_start" and "tool_call" in kinds and kinds[-1] == "run_end"
    with served.client("root") as http:
        every = {r["run_id"] for r in http.get("/v1/runs").json()["runs"]}
        assert every == set(ids.values())
        beta = http.get("/v1/runs", params={"tenant": "beta", "status": "ok"}).json()
        assert [r["run_id"] for r in beta["runs"]] == [ids["beta"]]
        assert http.get("/v1/runs", params={"stop_reason": "budget_exceeded"}).json() == {
            "count": 0,
            "runs": [],
        }


# -- approvals ----------------------------------------------------------------------------
def _approval_policy() -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["refund.send"]},
            "writes": {"require_approval": True, "approval_timeout_seconds": 30},
        }
    )


class Agent(threading.Thread):
    """A governed run of acme's in a thread, calling refund.send once (it waits for an
    approval in the store's queue)."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.sent: list[int] = []
        self.outcome: Any = None
        self.run_id = ""

    def run(self) -> None:
        def send(amount: int) -> str:
            self.sent.append(amount)
            return f"sent {amount}"

        tool = corral.tool(send, name="refund.send", effect="write")
        policy = _approval_policy()
        try:
            with corral.Run(
                policy, tools=[tool], store=self.store, tenant="acme", agent="bot"
            ) as run:
                self.run_id = run.id
                self.outcome = run.call("refund.send", {"amount": 42})
        except corral.Stop as stop:
            self.outcome = stop


def _pending(store: Store) -> ApprovalRecord:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = store.list_approvals()
        if found:
            return found[0]
        time.sleep(0.01)
    pytest.fail("no approval became pending")


def test_an_approval_over_http_releases_the_waiting_agent(served: Served) -> None:
    agent = Agent(served.store)
    agent.start()
    request = _pending(served.store)
    with served.client("acme-approver") as http:
        listed = http.get("/v1/approvals").json()
        assert [a["id"] for a in listed["approvals"]] == [request.id]
        assert listed["approvals"][0]["arguments"] == {"amount": 42}
        with served.client("beta-approver") as other:  # another tenant sees nothing
            assert other.get("/v1/approvals").json() == {"count": 0, "approvals": []}
            _error(other.get(f"/v1/approvals/{request.id}"), 404, "not_found")
            _error(other.post(f"/v1/approvals/{request.id}/approve", json={}), 404, "not_found")
        with served.client("acme-agent") as agent_key:  # an agent may look, never decide
            assert agent_key.get(f"/v1/approvals/{request.id}").status_code == 200
            _error(agent_key.post(f"/v1/approvals/{request.id}/approve", json={}), 403, "forbidden")
        decided = http.post(f"/v1/approvals/{request.id}/approve", json={"reason": "checked"})
        assert decided.status_code == 200, decided.text
        row = decided.json()["approval"]
        assert row["status"] == "approved" and row["approver"] == "acme-approver"
        assert row["reason"] == "checked"
        again = http.post(f"/v1/approvals/{request.id}/deny", json={})
        assert "it is approved" in _error(again, 409, "approval_conflict")
    agent.join(20)
    assert agent.outcome == "sent 42" and agent.sent == [42]


def test_a_denial_over_http_stops_the_agent_and_a_waiter_hears_it(served: Served) -> None:
    agent = Agent(served.store)
    agent.start()
    request = _pending(served.store)
    waited: dict[str, Any] = {}

    def wait() -> None:
        with served.client("acme-agent") as http:
            waited.update(
                http.get(f"/v1/approvals/{request.id}/wait", params={"timeout": 20}).json()
            )

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    with served.client("acme-admin") as http:
        assert (
            http.post(f"/v1/approvals/{request.id}/deny", json={"reason": "no"}).status_code == 200
        )
    waiter.join(20)
    assert waited["approval"]["status"] == "denied" and waited["waited_out"] is False
    agent.join(20)
    assert not agent.is_alive(), agent.outcome
    recorded = served.store.get_run(agent.run_id)
    assert recorded is not None and recorded.stop_reason == "approval_denied"
    assert agent.sent == []


def test_a_wait_that_times_out_says_pending_never_denied(served: Served) -> None:
    file_request(served.store, "apr_wait", "acme", run_id="run_w")
    with served.client("acme-approver") as http:
        started = time.monotonic()
        out = http.get("/v1/approvals/apr_wait/wait", params={"timeout": 0.3}).json()
        assert time.monotonic() - started >= 0.3
        assert out["waited_out"] is True and out["approval"]["status"] == "pending"
        _error(
            http.get("/v1/approvals/apr_wait/wait", params={"timeout": 61}), 422, "invalid_request"
        )


# -- the kill switch ----------------------------------------------------------------------
def test_the_kill_switch_by_role_and_tenant_and_a_running_agent_sees_it(served: Served) -> None:
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    run = corral.Run(policy, tools=[_read()], store=served.store, tenant="acme", agent="bot")
    assert run.call("kb.read", {"q": "before"}) == "read before"
    body = {"scope": "tenant", "target": "acme", "mode": "stop_all", "reason": "incident"}
    for key in ("acme-agent", "acme-approver", "beta-admin"):
        with served.client(key) as http:
            _error(http.post("/v1/killswitch", json=body), 403, "forbidden")
    with served.client("acme-admin") as http:
        _error(http.post("/v1/killswitch", json={"scope": "global"}), 403, "forbidden")
        _error(
            http.post("/v1/killswitch", json={"scope": "tool", "target": "kb.read"}),
            403,
            "forbidden",
        )
        on = http.post("/v1/killswitch", json=body)
        assert on.status_code == 200 and on.json()["switch"]["by"] == "acme-admin"
    deadline = time.monotonic() + 1.5  # within the kill switch's freshness
    with pytest.raises(corral.Stop) as stopped:
        while time.monotonic() < deadline:
            run.call("kb.read", {"q": f"after {time.monotonic()}"})
            time.sleep(0.02)
    assert stopped.value.reason == "kill_switch"
    with served.client("beta-approver") as http:  # another tenant's switch is not shown
        assert http.get("/v1/killswitch").json() == {"count": 0, "switches": []}
    with served.client("acme-approver") as http:
        shown = http.get("/v1/killswitch").json()["switches"]
        assert [(s["scope"], s["target"], s["reason"]) for s in shown] == [
            ("tenant", "acme", "incident")
        ]
        _error(
            http.delete("/v1/killswitch", params={"scope": "tenant", "target": "acme"}),
            403,
            "forbidden",
        )
    with served.client("root") as http:
        assert (
            http.post("/v1/killswitch", json={"scope": "global", "reason": "all"}).status_code
            == 200
        )
        with served.client("beta-agent") as beta:  # the fleet-wide one concerns beta too
            assert [s["scope"] for s in beta.get("/v1/killswitch").json()["switches"]] == ["global"]
        assert http.delete("/v1/killswitch").json() == {"cleared": True}
    with served.client("acme-admin") as http:
        off = http.delete("/v1/killswitch", params={"scope": "tenant", "target": "acme"})
        assert off.json() == {"cleared": True}
        assert http.delete(
            "/v1/killswitch", params={"scope": "tenant", "target": "acme"}
        ).json() == {"cleared": False}
        bad = http.post("/v1/killswitch", json={"scope": "tool", "target": "Not A Tool"})
        assert bad.status_code in (400, 403)


# -- audit --------------------------------------------------------------------------------
def test_the_audit_chain_is_the_global_admins(served: Served) -> None:
    _runs(served.store)
    for key in ("acme-admin", "acme-agent", "beta-approver"):
        with served.client(key) as http:
            _error(http.get("/v1/audit/verify"), 403, "forbidden")
            _error(http.get("/v1/audit/records"), 403, "forbidden")
    with served.client("root") as http:
        verified = http.get("/v1/audit/verify").json()["verify"]
        assert verified["ok"] is True and verified["checked"] > 0
        first = http.get("/v1/audit/records", params={"limit": 3}).json()
        assert first["count"] == 3 and [r["seq"] for r in first["records"]] == [1, 2, 3]
        assert not any("crl_" in json.dumps(r) for r in first["records"])  # keys' audit: no secret
        rest = http.get("/v1/audit/records", params={"after": first["next_after"]}).json()
        assert rest["records"][0]["seq"] == 4
        text = http.get("/metrics")
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    with served.client("acme-admin") as http:
        _error(http.get("/metrics"), 403, "forbidden")


# -- bad input ----------------------------------------------------------------------------
def test_bad_requests_get_the_error_shape(served: Served) -> None:
    with served.client("root") as http:
        big = http.post("/v1/killswitch", content=b"{" + b" " * (2 << 20) + b"}",
                        headers={"content-type": "application/json"})  # fmt: skip
        _error(big, 413, "too_large")

        def chunks() -> Iterator[bytes]:
            yield b'{"reason": "'
            for _ in range(40):
                yield b"x" * 65536
            yield b'"}'

        streamed = http.post(
            "/v1/killswitch", content=chunks(), headers={"content-type": "application/json"}
        )
        _error(streamed, 413, "too_large")
        _error(http.post("/v1/killswitch", json={"scope": "bogus"}), 422, "invalid_request")
        _error(
            http.post(
                "/v1/killswitch", content=b"{not json", headers={"content-type": "application/json"}
            ),
            422,
            "invalid_request",
        )
        _error(http.get("/v1/runs", params={"limit": 0}), 422, "invalid_request")
        _error(http.get("/v1/nothing-here"), 404, "not_found")
        _error(http.put("/v1/runs"), 405, "method_not_allowed")
        _error(http.get("/v1/runs/" + "x" * 300), 404, "not_found")
        assert http.get("/v1/killswitch").json()["count"] == 0  # nothing was switched on


#: Every /v1 endpoint, for the key checks.
ENDPOINTS = [
    ("POST", "/v1/runs"),
    ("GET", "/v1/runs/{run}/tools"),
    ("POST", "/v1/runs/{run}/steps"),
    ("POST", "/v1/runs/{run}/tool-calls"),
    ("POST", "/v1/runs/{run}/tool-calls/{ticket}/report"),
    ("POST", "/v1/runs/{run}/model-calls"),
    ("POST", "/v1/runs/{run}/model-calls/{model_call}/settle"),
    ("POST", "/v1/runs/{run}/end"),
    ("GET", "/v1/runs"),
    ("GET", "/v1/runs/{run}"),
    ("GET", "/v1/runs/{run}/timeline"),
    ("GET", "/v1/approvals"),
    ("GET", "/v1/approvals/{approval}"),
    ("POST", "/v1/approvals/{approval}/approve"),
    ("POST", "/v1/approvals/{approval}/deny"),
    ("GET", "/v1/approvals/{approval}/wait"),
    ("GET", "/v1/approvals/stream"),
    ("GET", "/v1/killswitch"),
    ("POST", "/v1/killswitch"),
    ("DELETE", "/v1/killswitch"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/audit/records"),
    ("GET", "/metrics"),
]


def test_every_endpoint_is_listed_here() -> None:
    from corral.testing import MemoryStore

    app = create_app(MemoryStore())
    paths = {
        (m, path)
        for path, item in app.openapi()["paths"].items()
        for m in (k.upper() for k in item)
        if path.startswith("/v1") or path == "/metrics"
    }
    names = {"{run}": "{run_id}", "{approval}": "{approval_id}", "{ticket}": "{ticket_id}",
             "{model_call}": "{call_id}"}  # fmt: skip
    listed = set()
    for method, path in ENDPOINTS:
        for short, long in names.items():
            path = path.replace(short, long)
        listed.add((method, path))
    assert paths == listed


# -- the command --------------------------------------------------------------------------
def test_corral_serve_starts_answers_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "CORRAL_DB": f"sqlite:///{tmp_path / 'served.db'}"}
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral", "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "corral serve did not answer"
                time.sleep(0.1)
        assert ready.json() == {"status": "ready"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/runs").status_code == 401
        assert (
            "/v1/approvals/{approval_id}/approve"
            in httpx.get(f"http://127.0.0.1:{port}/openapi.json").json()["paths"]
        )
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in err and "served.db" in err


def test_the_approvals_stream_tells_of_new_requests_and_their_decisions(served: Served) -> None:
    def request(approval_id: str, tenant: str) -> None:
        file_request(served.store, approval_id, tenant)

    request("apr_first", "acme")
    events: list[dict[str, Any]] = []
    with (
        served.client("acme-approver") as http,
        http.stream("GET", "/v1/approvals/stream") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        request("apr_beta", "beta")  # another tenant's: never shown here
        request("apr_second", "acme")
        while len(events) < 3:
            line = next(lines)
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                if len(events) == 2:
                    with served.client("acme-admin") as admin:
                        admin.post("/v1/approvals/apr_first/deny", json={"reason": "no"})
    assert [(e["id"], e["status"]) for e in events] == [
        ("apr_first", "pending"),
        ("apr_second", "pending"),
        ("apr_first", "denied"),
    ]
    with (
        served.client("beta-agent") as other,
        other.stream("GET", "/v1/approvals/stream", params={"tenant": "acme"}) as refused,
    ):
        assert refused.status_code == 403


def test_a_body_trickled_or_left_unfinished_is_refused_as_too_slow(tmp_path: Path) -> None:
    import socket

    store = SQLiteStore(str(tmp_path / "slow.db"))
    try:
        with serving(store, body_seconds=0.5) as served:
            host, port = served.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                head = (
                    "POST /v1/killswitch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Authorization: Bearer {served.keys['root']}\r\nContent-Length: 100\r\n\r\n"
                )
                conn.sendall(head.encode() + b'{"reason": "')  # ... and the rest never comes
                started = time.monotonic()
                answer = ""
                while '"}}' not in answer:  # the whole error body, however it is split
                    chunk = conn.recv(65536).decode()
                    assert chunk, answer
                    answer += chunk
            assert answer.startswith("HTTP/1.1 408"), answer
            assert '"too_slow"' in answer and time.monotonic() - started < 5
            with served.client("root") as http:  # nothing was switched on; the server serves on
                assert http.get("/v1/killswitch").json()["count"] == 0
    finally:
        store.close()


def test_a_switch_set_over_http_cancels_the_approvals_it_covers(served: Served) -> None:
    for approval_id, tenant in (("apr_a", "acme"), ("apr_b", "beta")):
        file_request(served.store, approval_id, tenant)
    with served.client("acme-admin") as http:
        switch = {"scope": "tenant", "target": "acme", "mode": "disable_writes", "reason": "drill"}
        assert http.post("/v1/killswitch", json=switch).status_code == 200
    cancelled = served.store.get_approval("apr_a")
    untouched = served.store.get_approval("apr_b")
    assert cancelled is not None and cancelled.status == "cancelled"
    assert untouched is not None and untouched.status == "pending"  # another tenant's
