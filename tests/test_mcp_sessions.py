"""MCP sessions through corral's proxy, with the official ``mcp`` client and the tests'
ledger server (built on the SDK): a client's own idempotency key makes a retried write
run once across sessions; the ``execute_tool`` span carries the ``mcp.*`` attributes; a
stdio client that leaves during a write leaves the write's claim unknown (never run
twice), its run stopped ``cancelled``, and the proxy process ends with nothing left
running.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

import corral
from corral.mcp.proxy import KEY_META, Proxy, Upstream
from corral.record import tracing
from corral.stores.sqlite import SQLiteStore

pytest.importorskip("mcp_server_time", reason="the MCP extra's test servers")

LEDGER = Path(__file__).parent / "fixtures" / "mcp" / "ledger_server.py"
SRC = str(Path(corral.__file__).resolve().parent.parent)

POLICY = {
    "tools": {
        "allow": ["ledger.balance", "ledger.pay", "ledger.slow_pay"],
        "specs": {"ledger.balance": {"effect": "read", "cache": False}},
    },
    "writes": {"require_approval": False},
}


def _ledger(state: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(LEDGER), str(state)])


def _text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


async def _session(
    db: Path, state: Path, calls: list[tuple[str, dict[str, Any], dict[str, Any] | None]]
) -> list[types.CallToolResult]:
    """One proxy, one client session (a run): the calls, in order."""
    store = SQLiteStore(db)
    try:
        proxy = Proxy(
            corral.Policy.from_dict(POLICY), [Upstream("ledger", _ledger(state))], store=store
        )
        async with proxy, Client(proxy.server()) as client:
            return [await client.call_tool(n, a, meta=m) for n, a, m in calls]  # type: ignore[arg-type]
    finally:
        store.close()


def test_a_clients_own_idempotency_key_runs_a_write_once_across_sessions(tmp_path: Path) -> None:
    state = tmp_path / "ledger"
    state.mkdir()
    db = tmp_path / "corral.db"
    pay = {"account": "acme", "amount": 5}
    keyed = {KEY_META: "invoice-7"}
    [first] = anyio.run(_session, db, state, [("ledger.pay", pay, keyed)])
    assert not first.is_error and _text(first) == "paid"
    # The answer was lost; the client retries in a new session (a new run): replayed.
    again, other_args, unkeyed = anyio.run(
        _session,
        db,
        state,
        [
            ("ledger.pay", pay, keyed),
            ("ledger.pay", {**pay, "amount": 6}, keyed),  # the key with other arguments
            ("ledger.pay", pay, None),  # no key: today's derived key, of this run
        ],
    )
    assert not again.is_error and _text(again) == "paid"
    assert other_args.is_error and "idempotency_mismatch" in _text(other_args), _text(other_args)
    assert not unkeyed.is_error
    assert (state / "payments.log").read_text() == "acme 5\n" * 2  # keyed once, unkeyed once
    with SQLiteStore(db) as store:
        outcomes = [
            e.data.get("outcome")
            for run in store.list_runs()
            for e in store.events(run.id)
            if e.kind == "tool_call"
        ]
    assert sorted(outcomes) == ["ok", "ok", "replayed"]
    [bad] = anyio.run(_session, db, state, [("ledger.pay", pay, {KEY_META: 7})])
    assert bad.is_error and _text(bad).startswith("invalid_tool_args:ledger.pay (idempotency_key)")


@pytest.fixture
def exporter() -> Iterator[Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    sink = tracing.enable(provider)
    yield found
    tracing.disable(sink)


def test_the_proxied_execute_tool_span_carries_the_mcp_attributes(
    tmp_path: Path, exporter: Any
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    state = tmp_path / "ledger"
    state.mkdir()

    async def go() -> None:
        store = SQLiteStore(tmp_path / "corral.db")
        try:
            proxy = Proxy(
                corral.Policy.from_dict(POLICY), [Upstream("ledger", _ledger(state))], store=store
            )
            async with proxy:
                for mode in ("legacy", "2026-07-28"):
                    async with Client(proxy.server(), mode=mode) as client:  # type: ignore[arg-type]
                        got = await client.call_tool("ledger.balance", {"account": mode})
                        assert not got.is_error
        finally:
            store.close()

    anyio.run(go)
    spans = [s for s in exporter.get_finished_spans() if s.name == "execute_tool ledger.balance"]
    seen = {}
    for span in spans:
        attrs = dict(span.attributes or {})
        assert attrs["mcp.server"] == "ledger" and attrs["mcp.tool"] == "balance"
        assert attrs["mcp.method"] == "tools/call" and attrs["gen_ai.tool.name"] == "ledger.balance"
        assert attrs["mcp.session.id"]
        seen[attrs["mcp.protocol.version"]] = attrs["mcp.session.id"]
    assert set(seen) == {"2025-11-25", "2026-07-28"}, seen
    assert len(set(seen.values())) == 2  # two sessions, two runs


def test_attributes_are_checked_and_never_corrals_own(tmp_path: Path) -> None:
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"], "specs": {"kb.read": {
        "effect": "read", "args_schema": {"type": "object"}}}}})  # fmt: skip
    with SQLiteStore(tmp_path / "corral.db") as store:
        with corral.Run(policy, store=store) as run:
            for bad in ({"gen_ai.tool.name": "x"}, {"corral.usd": "1"}, {"plain": "x"}, {"a.b": 1}):
                with pytest.raises(corral.ConfigError):
                    run.authorize("kb.read", {}, attributes=bad)  # type: ignore[arg-type]
            ticket = run.authorize("kb.read", {}, attributes={"mcp.server": "kb"})
            assert run.report(ticket, "ok") == "ok"
        [event] = [e for e in store.events(run.id) if e.kind == "tool_call"]
    assert event.data["attributes"] == {"mcp.server": "kb"}  # and so on its span


def _ask(proc: subprocess.Popen[bytes], message: dict[str, Any]) -> dict[str, Any] | None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(message).encode() + b"\n")
    proc.stdin.flush()
    if "id" not in message:
        return None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, "the proxy did not answer"
    answer: dict[str, Any] = json.loads(proc.stdout.readline())
    return answer


def test_a_stdio_client_that_leaves_during_a_write(tmp_path: Path) -> None:
    """The client closes its pipe while a write runs: the call is recorded cancelled, the
    write's claim is unknown at once (it may have happened: never run again under its key,
    here the client's own), the run stops ``cancelled``, and the proxy ends at once."""
    state = tmp_path / "ledger"
    state.mkdir()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    db = tmp_path / "corral.db"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "corral", "mcp", "serve", "--policy", str(policy_file),
            "--db", f"sqlite:///{db}", "--stdio", f"ledger={sys.executable} {LEDGER} {state}",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": SRC},
    )  # fmt: skip
    try:
        hello = _ask(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})  # fmt: skip
        assert hello is not None and "result" in hello
        _ask(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert proc.stdin is not None
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "ledger.slow_pay", "arguments": {"account": "acme", "amount": 9, "seconds": 30},
            "_meta": {KEY_META: "transfer-1"}}}  # fmt: skip
        proc.stdin.write(json.dumps(call).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while not (state / "started.log").exists():
            assert time.monotonic() < deadline, "the write never reached the server"
            time.sleep(0.05)
        left = time.monotonic()
        proc.stdin.close()  # the client goes
        code = proc.wait(timeout=20)
        took = time.monotonic() - left
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=20)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert code == 0, err
    assert took < 5, f"the proxy took {took:.1f} s to end after its client left"
    assert not (state / "payments.log").exists()  # the upstream call was cancelled too
    with SQLiteStore(db) as store:
        [run] = store.list_runs()
        assert run.status == "stopped" and run.stop_reason == "cancelled", run
        outcomes = [e.data["outcome"] for e in store.events(run.id) if e.kind == "tool_call"]
        assert outcomes == ["cancelled"]
        [claim] = store.list_claims(now=time.time())
        assert claim.status == "unknown" and claim.key.endswith("transfer-1")

    # The client comes back and retries under its key: refused, never run twice.
    [retried] = anyio.run(
        _session,
        db,
        state,
        [
            (
                "ledger.slow_pay",
                {"account": "acme", "amount": 9, "seconds": 30},
                {KEY_META: "transfer-1"},
            )
        ],
    )
    assert retried.is_error and "outcome_unknown" in _text(retried), _text(retried)
    assert (state / "started.log").read_text() == "acme 9\n"
