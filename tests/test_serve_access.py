"""Every endpoint of ``corral serve`` tried with every key that may not use it on acme's
things — another tenant's agent, approver and admin, acme's own keys of the wrong role —
over a real socket: never an answer that reads, spends, decides or switches anything of
acme's (0 cross-tenant reads, spends or approvals), and acme's state unchanged after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral
from corral.controls.keys import Action, authenticate, permits
from corral.stores.sqlite import SQLiteStore
from serving import Served, file_request, serving

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}}
POLICY = corral.Policy.from_dict(
    {
        "tools": {
            "allow": ["kb.read"],
            "specs": {"kb.read": {"effect": "read", "args_schema": SCHEMA}},
        }
    }
)

#: Each endpoint: method, path (``{run}``, ``{approval}``, ``{ticket}``, ``{call}`` filled in
#: with acme's), body, the action it needs, and whether it concerns acme (else: every tenant).
ENDPOINTS: list[tuple[str, str, Any, Action, bool]] = [
    ("POST", "/v1/runs", {"policy": "support", "tenant": "acme"}, Action.RUN_START, True),
    ("GET", "/v1/runs/{run}/tools", None, Action.TOOLS_LIST, True),
    ("POST", "/v1/runs/{run}/steps", None, Action.TOOL_AUTHORIZE, True),
    (
        "POST",
        "/v1/runs/{run}/tool-calls",
        {"tool": "kb.read", "arguments": {"q": "x"}},
        Action.TOOL_AUTHORIZE,
        True,
    ),
    (
        "POST",
        "/v1/runs/{run}/tool-calls/{ticket}/report",
        {"output": "x"},
        Action.TOOL_REPORT,
        True,
    ),
    (
        "POST",
        "/v1/runs/{run}/model-calls",
        {"model": "m", "input_tokens": 1},
        Action.MODEL_RESERVE,
        True,
    ),
    (
        "POST",
        "/v1/runs/{run}/model-calls/{call}/settle",
        {"input_tokens": 1, "output_tokens": 1},
        Action.MODEL_SETTLE,
        True,
    ),
    ("POST", "/v1/runs/{run}/end", {"answer": "x"}, Action.RUN_END, True),
    ("GET", "/v1/runs?tenant=acme", None, Action.RUNS_READ, True),
    ("GET", "/v1/runs/{run}", None, Action.RUNS_READ, True),
    ("GET", "/v1/runs/{run}/timeline", None, Action.TIMELINE_READ, True),
    ("GET", "/v1/approvals?tenant=acme", None, Action.APPROVALS_READ, True),
    ("GET", "/v1/approvals/{approval}", None, Action.APPROVALS_READ, True),
    ("GET", "/v1/approvals/{approval}/wait?timeout=0", None, Action.APPROVALS_READ, True),
    ("POST", "/v1/approvals/{approval}/approve", {}, Action.APPROVALS_DECIDE, True),
    ("POST", "/v1/approvals/{approval}/deny", {}, Action.APPROVALS_DECIDE, True),
    (
        "POST",
        "/v1/killswitch",
        {"scope": "tenant", "target": "acme", "mode": "stop_all"},
        Action.KILL_TOGGLE,
        True,
    ),
    ("DELETE", "/v1/killswitch?scope=tenant&target=acme", None, Action.KILL_TOGGLE, True),
    ("POST", "/v1/killswitch", {"scope": "global"}, Action.KILL_TOGGLE, False),
    ("GET", "/v1/audit/verify", None, Action.AUDIT_VERIFY, False),
    ("GET", "/v1/audit/records", None, Action.AUDIT_EXPORT, False),
    ("GET", "/metrics", None, Action.METRICS_READ, False),
]

#: The keys tried: every one but a global admin's.
KEYS = ["beta-agent", "beta-approver", "beta-admin", "acme-agent", "acme-approver", "acme-admin"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = SQLiteStore(str(tmp_path / "access.db"))
    try:
        with serving(store, policies={"support": POLICY}) as running:
            yield running
    finally:
        store.close()


def _acme(served: Served) -> dict[str, str]:
    """acme's things: a run with an open ticket and model call, a pending approval."""
    with served.client("acme-admin") as http:
        run = http.post("/v1/runs", json={"policy": "support"}).json()["run_id"]
        ticket = http.post(
            f"/v1/runs/{run}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "a"}}
        ).json()["ticket"]
        call = http.post(
            f"/v1/runs/{run}/model-calls", json={"model": "m", "input_tokens": 1}
        ).json()["model_call"]
    file_request(served.store, "apr_0001", "acme", run_id=run)
    return {"run": run, "ticket": ticket, "call": call, "approval": "apr_0001"}


def test_no_key_reaches_what_its_role_or_tenant_does_not_allow(served: Served) -> None:
    things = _acme(served)
    before_runs = {r.id: r.status for r in served.store.list_runs()}
    before_events = len(served.store.events(things["run"]))
    refused = 0
    for key in KEYS:
        who = authenticate(served.store, served.keys[key])
        with served.client(key) as http:
            for method, path, body, action, acme in ENDPOINTS:
                if permits(who, action, "acme" if acme else None):
                    continue  # allowed: not this test's concern
                response = http.request(method, path.format(**things), json=body)
                assert response.status_code in (401, 403, 404), (key, method, path, response.text)
                assert list(response.json()) == ["error"], (key, path)
                assert "acme" not in response.text or response.status_code == 403, (key, path)
                refused += 1
    assert refused >= 60
    # Nothing of acme's moved: no run started or ended, no event, no decision, no switch.
    assert {r.id: r.status for r in served.store.list_runs()} == before_runs
    assert len(served.store.events(things["run"])) == before_events
    approval = served.store.get_approval("apr_0001")
    assert approval is not None and approval.status == "pending"
    assert served.store.kill_switches() == []
    held = served.app.state.runs
    run = held.get(authenticate(served.store, served.keys["root"]), things["run"], Action.RUNS_READ)
    assert things["ticket"] in run.tickets and things["call"] in run.model_calls


def test_a_listing_never_shows_another_tenants_things(served: Served) -> None:
    _acme(served)
    for key in ("beta-agent", "beta-approver", "beta-admin"):
        with served.client(key) as http:
            assert http.get("/v1/runs").json() == {"count": 0, "runs": []}
            assert http.get("/v1/approvals", params={"status": "all"}).json() == {
                "count": 0,
                "approvals": [],
            }
