"""``corral golden run --model openai:MODEL@BASE_URL`` against a local chat-completions server,
over real sockets: the suite runs, its baseline is saved and holds, and a changed endpoint
drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from servers import OpenAIServer, Turn, calls, text
from typer.testing import CliRunner

from corral.cli.app import app

SUITE = """
suite: orders
tools:
  orders.lookup:
    args_schema:
      type: object
      properties: {order_id: {type: string}}
      required: [order_id]
    responses:
      - when: {order_id: A-1001}
        returns: {order_id: A-1001, status: shipped}
  kb.search:
    responses: [{returns: "Refunds take 5-7 business days."}]
policy:
  tools: {allow: [orders.lookup, kb.search]}
  models:
    prices:
      gpt-test: {input_usd_per_mtok: 1, output_usd_per_mtok: 2}
tasks:
  - id: order
    task: Where is order A-1001?
    expect:
      stop_reason: ok
      called: [orders.lookup]
      answer: {json: [{path: status, equals: shipped}]}
  - id: refund
    task: How long do refunds take?
    expect:
      stop_reason: ok
      called: [kb.search]
      tool_calls: {max: 1}
      answer: {contains: ["5-7"]}
"""


def answering(extra_calls: int = 0) -> Any:
    """A responder playing a sensible model: a tool call first, then an answer read from the
    tool's output; ``extra_calls`` searches more before that call."""

    def respond(body: dict[str, Any]) -> Turn:
        messages = body["messages"]
        task = next(m["content"] for m in messages if m["role"] == "user")
        done = sum(1 for m in messages if m["role"] == "tool")
        if done < extra_calls:  # a different search each time: not served from the cache
            return calls(("kb__search", {"query": f"background {done}"}))
        if done == extra_calls:
            if "order" in task:
                return calls(("orders__lookup", {"order_id": "A-1001"}))
            return calls(("kb__search", {"query": "refunds"}))
        if "order" in task:
            return text('{"order_id": "A-1001", "status": "shipped"}', usage=(300, 20))
        return text("Refunds take 5-7 business days.", usage=(280, 12))

    return respond


def golden(*args: str, env: dict[str, str] | None = None) -> Any:
    """``corral golden run ARGS``, its tables one row a line."""
    return CliRunner().invoke(app, ["golden", "run", *args], env={"COLUMNS": "250", **(env or {})})


def test_the_openai_spec_runs_a_suite_against_a_compatible_endpoint(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """Every task runs through the adapter over HTTP, its expectations met; a saved
    baseline holds on the next run; the key comes from CORRAL_GOLDEN_API_KEY."""
    openai_server.responder = answering()
    suite = tmp_path / "orders.yaml"
    suite.write_text(SUITE)
    base = tmp_path / "orders.json"
    spec = f"openai:gpt-test@{openai_server.url}/v1"
    env = {"CORRAL_GOLDEN_API_KEY": "sk-local-test"}
    first = golden(str(suite), "--model", spec, "--save-baseline", str(base), "--json", env=env)
    assert first.exit_code == 0, first.stdout + first.stderr
    report = json.loads(first.stdout)
    runs = {t["id"]: t["runs"][0] for t in report["tasks"]}
    assert runs["order"]["by_tool"] == {"orders.lookup": 1}
    assert runs["order"]["requests"] == 2 and runs["order"]["stop_reason"] == "ok"
    assert runs["refund"]["answer"] == "Refunds take 5-7 business days."
    assert report["model"] == spec
    assert len(openai_server.requests) == 4
    assert all(
        r["headers"]["authorization"] == "Bearer sk-local-test" for r in openai_server.requests
    )
    assert {r["body"]["model"] for r in openai_server.requests} == {"gpt-test"}
    second = golden(str(suite), "--model", spec, "--baseline", str(base), env=env)
    assert second.exit_code == 0, second.stdout + second.stderr
    assert "golden suite orders: passed" in second.stdout


def test_an_endpoint_that_changed_its_behaviour_drifts(
    openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """The same suite after the endpoint starts searching once more first: exit 1, the
    drift table names both tasks' tool calls."""
    suite = tmp_path / "orders.yaml"
    suite.write_text(SUITE)
    base = tmp_path / "orders.json"
    spec = f"openai:gpt-test@{openai_server.url}/v1"
    openai_server.responder = answering()
    assert golden(str(suite), "--model", spec, "--save-baseline", str(base)).exit_code == 0
    openai_server.responder = answering(extra_calls=1)
    result = golden(str(suite), "--model", spec, "--baseline", str(base))
    assert result.exit_code == 1, result.stdout + result.stderr
    drifted = {
        tuple(x.split()[:2]) for x in result.stdout.splitlines() if x.rstrip().endswith("drift")
    }
    assert {("order", "tool_calls"), ("refund", "tool_calls")} <= drifted
    assert "refund" in result.stdout and "<= 1" in result.stdout  # the broken expectation too


def test_no_key_is_sent_to_another_host_unasked(
    openai_server: OpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OPENAI_API_KEY stays home: a local endpoint gets no authorization header unless
    CORRAL_GOLDEN_API_KEY is set."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")
    monkeypatch.delenv("CORRAL_GOLDEN_API_KEY", raising=False)
    openai_server.responder = answering()
    suite = tmp_path / "orders.yaml"
    suite.write_text(SUITE)
    result = golden(str(suite), "--model", f"openai:gpt-test@{openai_server.url}/v1")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert all("authorization" not in r["headers"] for r in openai_server.requests)
