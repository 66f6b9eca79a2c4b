"""The agents' half of ``corral serve``: a governed run driven over HTTP — start, tool specs,
authorize and report, approvals, exactly-once writes, model calls, budgets shared across
concurrent runs, the kill switch, the stop and the end — on a real SQLite file over real
sockets, and an agent written in JavaScript driving a run through the raw API."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral
from corral.stores.sqlite import SQLiteStore
from serving import Served, serving

ROOT = Path(__file__).resolve().parent.parent

READ_SCHEMA = {
    "type": "object",
    "properties": {"q": {"type": "string"}},
    "required": ["q"],
    "additionalProperties": False,
}
WRITE_SCHEMA = {
    "type": "object",
    "properties": {"amount": {"type": "integer", "minimum": 1}},
    "required": ["amount"],
}


def support(**budgets: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["kb.read", "refund.send"],
                "specs": {
                    "kb.read": {"effect": "read", "args_schema": READ_SCHEMA, "cache": False},
                    "refund.send": {
                        "effect": "write",
                        "args_schema": WRITE_SCHEMA,
                        "cost_usd": 0.10,
                    },
                },
            },
            "writes": {"require_approval": True, "approval_timeout_seconds": 20},
            "budgets": {"max_tool_calls": 6, **budgets},
        }
    )


def shared_budget() -> corral.Policy:
    """kb.read costs $0.01 a call; acme may spend $0.25 a day across all its runs."""
    return corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["kb.read"],
                "specs": {
                    "kb.read": {
                        "effect": "read",
                        "args_schema": READ_SCHEMA,
                        "cost_usd": 0.01,
                        "cache": False,
                    }
                },
            },
            "budgets": {"max_tool_calls": 100},
            "limits": [{"per": "tenant", "window": "1d", "max_usd": 0.25}],
        }
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = SQLiteStore(str(tmp_path / "corral.db"))
    policies = {"support": support(), "default": support(), "shared": shared_budget()}
    try:
        with serving(store, policies=policies) as running:
            yield running
    finally:
        store.close()


def start(http: httpx.Client, **body: Any) -> str:
    response = http.post("/v1/runs", json={"policy": "support", "agent": "bot", **body})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def test_a_read_is_authorized_executed_by_the_agent_reported_and_the_run_ends(
    served: Served,
) -> None:
    with served.client("acme-agent") as http:
        started = http.post("/v1/runs", json={"policy": "support", "agent": "bot", "task": "t"})
        assert started.status_code == 201
        body = started.json()
        run_id = body["run_id"]
        assert body["tenant"] == "acme" and body["tools"] == ["kb.read", "refund.send"]
        specs = http.get(f"/v1/runs/{run_id}/tools", params={"format": "openai"}).json()
        assert [s["function"]["name"] for s in specs["tools"]] == ["kb__read", "refund__send"]
        assert http.post(f"/v1/runs/{run_id}/steps").json()["usage"]["steps"] == 1
        allowed = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "x"}}
        ).json()
        assert allowed["decision"] == "allow" and allowed["arguments"] == {"q": "x"}
        assert allowed["ticket"].startswith("tkt_") and allowed["timeout"] > 0
        hostile = "vendor is up <script>alert(1)</script>\x1b[2J"
        reported = http.post(
            f"/v1/runs/{run_id}/tool-calls/{allowed['ticket']}/report", json={"output": hostile}
        ).json()
        assert reported["decision"] == "ok"
        assert (
            reported["observation"].startswith("vendor is up")
            and "<script>" not in reported["observation"]
        )
        again = http.post(f"/v1/runs/{run_id}/tool-calls/{allowed['ticket']}/report", json={})
        assert again.status_code == 404  # a ticket is reported once
        ended = http.post(f"/v1/runs/{run_id}/end", json={"answer": "up"}).json()["result"]
        assert ended["status"] == "ok" and ended["answer"] == "up"
        assert ended["usage"]["tool_calls"] == 1 and ended["usage"]["steps"] == 1
        assert http.post(f"/v1/runs/{run_id}/end", json={}).json()["result"] == ended
        late = http.post(f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "run_ended"
        timeline = http.get(f"/v1/runs/{run_id}/timeline").json()["timeline"]
        assert [e["kind"] for e in timeline if e["kind"] == "tool_call"] == ["tool_call"]
    record = served.store.get_run(run_id)
    assert record is not None and record.status == "ok" and record.tenant == "acme"


def test_a_fixable_mistake_is_rejected_and_the_run_goes_on_a_denial_stops_it(
    served: Served,
) -> None:
    with served.client("acme-agent") as http:
        run_id = start(http)
        bad = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": 7}}
        ).json()
        assert bad["decision"] == "rejected" and bad["reason"] == "invalid_tool_args"
        assert "q" in bad["message"]
        ok = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "y"}}
        ).json()
        assert ok["decision"] == "allow"
        unknown = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "shell.exec", "arguments": {}}
        ).json()
        assert unknown["decision"] == "rejected" and unknown["tool"] == "shell.exec"
        for n in range(6):  # max_tool_calls: 6, one of them held by the open ticket
            answer = http.post(
                f"/v1/runs/{run_id}/tool-calls",
                json={"tool": "kb.read", "arguments": {"q": f"n{n}"}},
            ).json()
            if answer["decision"] == "stop":
                break
            http.post(
                f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report", json={"output": "."}
            )
        denied = answer
        assert denied["decision"] == "stop" and denied["stop"]["reason"] == "max_tool_calls"
        assert denied["stop"]["retryable"] is False
        late = http.post(f"/v1/runs/{run_id}/tool-calls/{ok['ticket']}/report", json={})
        assert late.status_code == 409  # the run has ended: its open tickets with it
        result = http.post(f"/v1/runs/{run_id}/end", json={"answer": "x"}).json()["result"]
        assert result["status"] == "stopped" and result["stop_reason"] == "max_tool_calls"


def test_a_write_is_pending_until_approved_then_runs_once(served: Served) -> None:
    with served.client("acme-agent") as http, served.client("acme-approver") as approver:
        run_id = start(http)
        call = {"tool": "refund.send", "arguments": {"amount": 5}, "idempotency_key": "ord-1"}
        first = http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json()
        assert first["decision"] == "pending" and first["tool"] == "refund.send"
        approval = first["approval_id"]
        listed = approver.get("/v1/approvals").json()["approvals"]
        assert [(a["id"], a["run_id"], a["arguments"]) for a in listed] == [
            (approval, run_id, {"amount": 5})
        ]
        again = http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json()
        assert again["decision"] == "pending" and again["approval_id"] == approval  # the same
        waited = http.get(f"/v1/approvals/{approval}/wait", params={"timeout": 0.2}).json()
        assert waited["waited_out"] is True
        assert approver.post(f"/v1/approvals/{approval}/approve", json={}).status_code == 200
        allowed = http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json()
        assert allowed["decision"] == "allow" and allowed["idempotency_key"].endswith(":ord-1")
        done = http.post(
            f"/v1/runs/{run_id}/tool-calls/{allowed['ticket']}/report", json={"output": "refunded"}
        ).json()
        assert done == {"decision": "ok", "observation": "refunded"}
        replay = http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json()
        assert replay == {"decision": "replayed", "tool": "refund.send", "output": "refunded"}
        result = http.post(f"/v1/runs/{run_id}/end", json={}).json()["result"]
        assert result["usage"]["tool_calls"] == 1
        assert Decimal(result["usage"]["usd"]) == Decimal("0.10")
    assert [a.status for a in served.store.list_approvals(status=None)] == ["used"]


def test_a_held_authorize_answers_once_decided_and_a_denial_stops_the_run(served: Served) -> None:
    answers: dict[str, Any] = {}
    with served.client("acme-agent") as http:
        run_id = start(http)
        call = {"tool": "refund.send", "arguments": {"amount": 9}, "hold": 30}

        def authorize() -> None:
            answers.update(http.post(f"/v1/runs/{run_id}/tool-calls", json=call).json())

        waiting = threading.Thread(target=authorize)
        waiting.start()
        with served.client("acme-approver") as approver:
            deadline = time.monotonic() + 20
            while not (pending := approver.get("/v1/approvals").json()["approvals"]):
                assert time.monotonic() < deadline, "no approval became pending"
                time.sleep(0.02)
            time.sleep(0.2)
            assert waiting.is_alive()  # held: the decision is awaited within the request
            denied = approver.post(f"/v1/approvals/{pending[0]['id']}/deny", json={"reason": "no"})
            assert denied.status_code == 200
        waiting.join(20)
    assert answers["decision"] == "stop" and answers["stop"]["reason"] == "approval_denied"


def test_a_failure_reported_ends_the_run_with_tool_error(served: Served) -> None:
    with served.client("acme-agent") as http:
        run_id = start(http)
        ticket = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "a"}}
        ).json()["ticket"]
        failed = http.post(
            f"/v1/runs/{run_id}/tool-calls/{ticket}/report", json={"error": "connection reset"}
        ).json()
        assert failed["decision"] == "stop" and failed["stop"]["reason"] == "tool_error"


def test_model_calls_are_reserved_clamped_and_settled(served: Served) -> None:
    with served.client("root") as http:
        inline = {
            "tools": {"allow": []},
            "budgets": {"max_tokens": 1000, "max_steps": 10},
            "models": {"prices": {"m-1": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}},
        }
        started = http.post("/v1/runs", json={"policy_inline": inline, "tenant": "acme"})
        assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        reserved = http.post(
            f"/v1/runs/{run_id}/model-calls",
            json={"model": "m-1", "input_tokens": 200, "max_tokens": 5000},
        ).json()
        assert reserved["decision"] == "allow" and reserved["max_tokens"] == 800  # clamped
        settled = http.post(
            f"/v1/runs/{run_id}/model-calls/{reserved['model_call']}/settle",
            json={"input_tokens": 200, "output_tokens": 300},
        ).json()
        assert settled["decision"] == "ok"
        assert settled["usage"]["input_tokens"] == 200 and settled["usage"]["output_tokens"] == 300
        over = http.post(
            f"/v1/runs/{run_id}/model-calls", json={"model": "m-1", "input_tokens": 600}
        ).json()
        assert over["decision"] == "stop" and over["stop"]["reason"] == "max_tokens"


def test_keys_tenants_and_roles_on_the_agents_endpoints(served: Served) -> None:
    with served.client("acme-agent") as acme:
        run_id = start(acme)
        inline = acme.post("/v1/runs", json={"policy_inline": {"tools": {"allow": []}}})
        assert inline.status_code == 400 and "admin" in inline.json()["error"]["message"]
        other = acme.post("/v1/runs", json={"policy": "support", "tenant": "beta"})
        assert other.status_code == 403
        unknown = acme.post("/v1/runs", json={"policy": "nope"})
        assert unknown.status_code == 400 and "support" in unknown.json()["error"]["message"]
    for key in ("beta-agent", "beta-admin"):
        with served.client(key) as beta:  # another tenant's run does not exist for them
            for method, path, body in (
                ("GET", f"/v1/runs/{run_id}/tools", None),
                ("POST", f"/v1/runs/{run_id}/steps", None),
                ("POST", f"/v1/runs/{run_id}/tool-calls", {"tool": "kb.read"}),
                ("POST", f"/v1/runs/{run_id}/model-calls", {"model": "m"}),
                ("POST", f"/v1/runs/{run_id}/end", {}),
            ):
                response = beta.request(method, path, json=body)
                assert response.status_code == 404, (key, path, response.text)
    with served.client("acme-approver") as approver:  # an approver does not run agents
        assert approver.post("/v1/runs", json={"policy": "support"}).status_code == 403
        denied = approver.post(f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read"})
        assert denied.status_code == 404
    with served.client("acme-agent") as acme:  # the run was not touched by any of it
        usage = acme.post(f"/v1/runs/{run_id}/steps").json()["usage"]
        assert usage["steps"] == 1 and usage["tool_calls"] == 0


def test_a_kill_switch_stops_the_next_call_of_a_run_driven_over_http(served: Served) -> None:
    with served.client("acme-agent") as http, served.client("acme-admin") as admin:
        run_id = start(http)
        assert (
            admin.post(
                "/v1/killswitch", json={"scope": "tenant", "target": "acme", "mode": "stop_all"}
            ).status_code
            == 200
        )
        stopped = http.post(
            f"/v1/runs/{run_id}/tool-calls", json={"tool": "kb.read", "arguments": {"q": "z"}}
        ).json()
        assert stopped["decision"] == "stop" and stopped["stop"]["reason"] == "kill_switch"


def test_a_tenant_budget_shared_by_concurrent_runs_over_http_is_never_overshot(
    served: Served,
) -> None:
    """16 runs of acme at once, each reading until stopped: $0.25 a day buys exactly 25
    calls of $0.01, whatever the interleaving."""

    def agent(n: int) -> int:
        with served.client("acme-agent") as http:
            run_id = start(http, policy="shared")
            calls = 0
            while True:
                answer = http.post(
                    f"/v1/runs/{run_id}/tool-calls",
                    json={"tool": "kb.read", "arguments": {"q": f"{n}-{calls}"}},
                ).json()
                if answer["decision"] == "stop":
                    assert answer["stop"]["reason"] == "max_usd", answer
                    return calls
                report = http.post(
                    f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report",
                    json={"output": "ok"},
                ).json()
                assert report["decision"] == "ok"
                calls += 1

    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(agent, range(16)))
    assert sum(made) == 25


def test_idle_runs_are_ended_as_cancelled(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "idle.db"))
    try:
        options = {"policies": {"support": support()}, "idle_seconds": 0.2, "sweep_seconds": 0.05}
        with serving(store, **options) as served, served.client("acme-agent") as http:
            run_id = start(http)
            deadline = time.monotonic() + 10
            while (late := http.get(f"/v1/runs/{run_id}")).json()["run"]["status"] == "running":
                assert time.monotonic() < deadline, "the idle run was never ended"
                time.sleep(0.05)
            assert late.json()["run"]["stop_reason"] == "cancelled"
            gone = http.post(f"/v1/runs/{run_id}/steps")
            assert gone.status_code == 409 and gone.json()["error"]["code"] == "run_ended"
            result = http.post(f"/v1/runs/{run_id}/end", json={}).json()["result"]
            assert (
                result["stop_reason"] == "cancelled" and "no request" in result["stop"]["message"]
            )
    finally:
        store.close()


# -- another language --------------------------------------------------------------------------
@pytest.mark.skipif(
    shutil.which("node") is None and not os.environ.get("CI"),
    reason="the JavaScript example needs node (Node.js 18 or later)",
)
def test_the_javascript_example_drives_a_governed_run(served: Served) -> None:
    node = shutil.which("node")
    assert node is not None, "node is missing (CI must have it)"
    env = {
        **os.environ,
        "CORRAL_URL": served.url,
        "CORRAL_KEY": served.keys["acme-agent"],
        "CORRAL_POLICY": "support",
    }
    done = subprocess.run(
        [node, str(ROOT / "examples" / "http_agent.mjs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("run ended: ok"), done.stdout
    run_id = lines[0].split()[-1]
    record = served.store.get_run(run_id)
    assert record is not None and record.status == "ok" and record.usage["tool_calls"] == 2


def test_credentials_are_resolved_there_and_given_to_the_executor_only(tmp_path: Path) -> None:
    secret = "tok-4f9a1c2e8b7d6a5f3e2d1c0b"
    provider = corral.EnvSecrets(environ={})
    environ = {provider.variable("acme", "crm.read", "token"): secret}
    provider = corral.EnvSecrets(environ=environ)
    policy = corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["crm.read"],
                "specs": {
                    "crm.read": {
                        "effect": "read",
                        "args_schema": READ_SCHEMA,
                        "credentials": ["token"],
                    }
                },
            }
        }
    )
    store = SQLiteStore(str(tmp_path / "creds.db"))
    try:
        with (
            serving(store, policies={"crm": policy}, secrets=provider) as served,
            served.client("acme-agent") as http,
        ):
            run_id = start(http, policy="crm")
            specs = http.get(f"/v1/runs/{run_id}/tools").text
            allowed = http.post(
                f"/v1/runs/{run_id}/tool-calls",
                json={"tool": "crm.read", "arguments": {"q": "x"}},
            ).json()
            assert allowed["credentials"] == {"token": secret}
            echoed = f"the token is {secret}"  # a tool echoing its credential
            report = f"/v1/runs/{run_id}/tool-calls/{allowed['ticket']}/report"
            observation = http.post(report, json={"output": echoed}).json()["observation"]
            http.post(f"/v1/runs/{run_id}/end", json={"answer": "done"})
            timeline = http.get(f"/v1/runs/{run_id}/timeline").text
            with served.client("root") as root:
                records = root.get("/v1/audit/records", params={"limit": 1000}).text
        assert secret not in specs and secret not in observation
        assert secret not in timeline and secret not in records
        assert all(secret not in str(e.data) for e in store.events(run_id))
    finally:
        store.close()
