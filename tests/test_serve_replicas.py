"""Two ``corral serve`` replicas over one PostgreSQL, each its own process: a tenant budget
shared exactly by 64 concurrent agents spread over both, a kill switch set on one seen by an
agent on the other within a second, an approval given on one releasing an agent waiting on
the other, the audit chain intact, and a replica killed mid-run leaving the other serving
while its holds are reclaimed by lease."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral
from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.controls.keys import create_key
from corral.stores.leases import LEASE_SECONDS
from crash import pg as crash_pg
from serving import serve_process

pytestmark = pytest.mark.slow

POLICY = """\
tools:
  allow: [kb.read, kb.peek, refund.send]
  specs:
    kb.peek:
      effect: read
      cache: false
      args_schema: {type: object, properties: {q: {type: string}}, required: [q]}
    kb.read:
      effect: read
      cost_usd: 0.01
      cache: false
      args_schema: {type: object, properties: {q: {type: string}}, required: [q]}
    refund.send:
      effect: write
      args_schema: {type: object, properties: {amount: {type: integer}}, required: [amount]}
writes: {require_approval: true, approval_timeout_seconds: 30}
budgets: {max_tool_calls: 1000}
limits:
  - {per: tenant, window: 1d, max_usd: 0.50}
"""


@dataclass
class Replicas:
    urls: list[str]
    procs: list[subprocess.Popen[str]]
    keys: dict[str, str]
    store: Any

    def client(self, replica: int, key: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"}
        return httpx.Client(base_url=self.urls[replica], headers=headers, timeout=60)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    pg = crash_pg()
    url = pg.require_postgres()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "support.yaml").write_text(POLICY)
    with pg.fresh_store(url) as store:
        db = f"{url}?schema={store.schema}"
        keys = {
            "agent": create_key(store, tenant="acme", role="agent", name="bot").token,
            "approver": create_key(store, tenant="acme", role="approver", name="ann").token,
            "admin": create_key(store, tenant="acme", role="admin", name="ops").token,
            "root": create_key(store, tenant=None, role="admin", name="root").token,
        }
        started = [serve_process(db, tmp_path / "policies") for _ in range(2)]
        try:
            yield Replicas([u for u, _ in started], [p for _, p in started], keys, store)
        finally:
            for _, proc in started:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            for _, proc in started:
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _start(http: httpx.Client) -> str:
    response = http.post("/v1/runs", json={"policy": "support", "agent": "bot"})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def _read(http: httpx.Client, run_id: str, q: str) -> dict[str, Any]:
    body = {"tool": "kb.read", "arguments": {"q": q}}
    answer: dict[str, Any] = http.post(f"/v1/runs/{run_id}/tool-calls", json=body).json()
    if answer["decision"] == "allow":
        report = f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report"
        return dict(http.post(report, json={"output": "up"}).json())
    return answer


def _tenant_scope() -> str:
    policy = corral.Policy.from_yaml(POLICY)
    charge = Charge(usd=Decimal(1))
    return windows.scoped(policy, charge, tenant="acme", agent=None, now=time.time())[0].scope


def test_two_replicas_share_the_budget_the_switch_the_approvals_and_the_chain(
    replicas: Replicas,
) -> None:
    # 64 agents, half on each replica, reading until the tenant's $0.50 a day is spent.
    def agent(n: int) -> int:
        with replicas.client(n % 2, "agent") as http:
            run_id = _start(http)
            made = 0
            while True:
                answer = _read(http, run_id, f"{n}-{made}")
                if answer["decision"] == "stop":
                    assert answer["stop"]["reason"] == "max_usd", answer
                    return made
                made += 1

    with ThreadPoolExecutor(64) as pool:
        made = list(pool.map(agent, range(64)))
    assert sum(made) == 50  # $0.50 at $0.01 a call: not one more, not one less
    assert replicas.store.scope_usage(_tenant_scope()) == (50, Decimal("0.50"))

    # An approval given on replica 0 releases an agent waiting on replica 1.
    with replicas.client(1, "agent") as http, replicas.client(0, "approver") as approver:
        run_id = _start(http)
        answers: dict[str, Any] = {}
        call = {"tool": "refund.send", "arguments": {"amount": 7}, "hold": 30}
        waiting = threading.Thread(
            target=lambda: answers.update(
                http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json()
            )
        )
        waiting.start()
        deadline = time.monotonic() + 20
        while not (pending := approver.get("/v1/approvals").json()["approvals"]):
            assert time.monotonic() < deadline, "the approval never reached replica 0"
            time.sleep(0.05)
        assert pending[0]["run_id"] == run_id
        assert (
            approver.post(f"/v1/approvals/{pending[0]['id']}/approve", json={}).status_code == 200
        )
        waiting.join(30)
        assert answers["decision"] == "allow" and answers["arguments"] == {"amount": 7}

    # A kill switch set on replica 0 stops an agent on replica 1 within a second.
    with replicas.client(1, "agent") as http, replicas.client(0, "admin") as admin:
        run_id = _start(http)
        switch = {"scope": "tenant", "target": "acme", "mode": "stop_all", "reason": "drill"}
        assert admin.post("/v1/killswitch", json=switch).status_code == 200
        set_at = time.monotonic()
        n = 0
        while True:
            body = {"tool": "kb.peek", "arguments": {"q": f"k{n}"}}  # free: the budget is spent
            answer = http.post(f"/v1/runs/{run_id}/tool-calls", json=body).json()
            if answer["decision"] == "stop":
                break
            http.post(f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report", json={})
            n += 1
        seen_after = time.monotonic() - set_at
        print(f"kill switch set on replica 0 seen on replica 1 after {seen_after * 1000:.0f} ms")
        assert answer["stop"]["reason"] == "kill_switch" and seen_after <= 1.0, seen_after
        assert admin.delete(
            "/v1/killswitch", params={"scope": "tenant", "target": "acme"}
        ).json() == {"cleared": True}

    # The audit chain, written by two processes, holds.
    with replicas.client(1, "root") as root:
        verified = root.get("/v1/audit/verify").json()["verify"]
        assert verified["ok"] is True and verified["checked"] > 100


def test_a_replica_killed_mid_run_leaves_the_other_serving_and_its_holds_lapse(
    replicas: Replicas,
) -> None:
    scope = _tenant_scope()
    with replicas.client(0, "agent") as doomed, replicas.client(1, "agent") as survivor:
        held_run = _start(doomed)
        body = {"tool": "kb.read", "arguments": {"q": "held"}}
        held = doomed.post(f"/v1/runs/{held_run}/tool-calls", json=body).json()
        assert held["decision"] == "allow"  # authorized, never reported: $0.01 held
        assert replicas.store.scope_usage(scope) == (1, Decimal("0.01"))
        replicas.procs[0].send_signal(signal.SIGKILL)
        replicas.procs[0].wait(10)
        with pytest.raises(httpx.TransportError):
            doomed.get("/healthz")
        run_id = _start(survivor)  # the other replica serves on
        assert _read(survivor, run_id, "after")["decision"] == "ok"
        assert replicas.store.scope_usage(scope) == (2, Decimal("0.02"))
    # Once the dead replica's lease lapses, whoever reserves next refunds its hold.
    later = time.time() + LEASE_SECONDS + 1
    assert replicas.store.reclaim(later) == 1
    assert replicas.store.scope_usage(scope) == (1, Decimal("0.01"))
    if os.environ.get("CI"):
        assert replicas.procs[1].poll() is None
