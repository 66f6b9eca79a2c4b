"""The MCP proxy over streamable HTTP, on real sockets, with the official ``mcp`` client and
the tests' ledger server: a 2025-11-25 session's run ends when the client closes the session
(``DELETE``) or when it goes idle, a stateless 2026-07-28 client's when it goes idle; a client
that drops its connection during a call leaves the proxy serving others, the call's outcome
recorded (a write still running when the session ends is cancelled, its claim unknown);
``corral serve --mcp-policy`` serves the proxy at ``/mcp`` from the control plane's app.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

import corral
from corral.mcp.proxy import KEY_META
from corral.stores.sqlite import SQLiteStore
from serving import free_port

pytest.importorskip("uvicorn", reason="HTTP needs the serve extra")

LEDGER = Path(__file__).parent / "fixtures" / "mcp" / "ledger_server.py"
SRC = str(Path(corral.__file__).resolve().parent.parent)
POLICY = {
    "tools": {
        "allow": ["ledger.balance", "ledger.slow_pay"],
        "specs": {"ledger.balance": {"effect": "read", "cache": False}},
    },
    "writes": {"require_approval": False},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextmanager
def _serving(command: list[str], port: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        command, env={**os.environ, "PYTHONPATH": SRC}, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


def _runs(db: Path) -> list[corral.stores.base.RunRecord]:  # type: ignore[name-defined]
    with SQLiteStore(db) as store:
        return store.list_runs()


def _until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def _status(db: Path) -> list[str]:
    return sorted(r.status for r in _runs(db))


def _open_session(http: httpx.Client, url: str) -> dict[str, str]:
    """A 2025-11-25 session opened by hand (never deleted): its headers."""
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}}  # fmt: skip
    opened = http.post(url, headers=HEADERS, json=hello)
    assert opened.status_code == 200, opened.text
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"],
               "mcp-protocol-version": "2025-11-25"}  # fmt: skip
    http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def _pay(seconds: float, key: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "ledger.slow_pay", "arguments": {"account": key, "amount": 1, "seconds": seconds},
        "_meta": {KEY_META: key}}}  # fmt: skip


def test_http_sessions_end_their_runs_and_clients_that_drop_out(tmp_path: Path) -> None:
    state = tmp_path / "ledger"
    state.mkdir()
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    db = tmp_path / "corral.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    command = [
        sys.executable, "-m", "corral", "mcp", "serve", "--policy", str(policy_file),
        "--db", f"sqlite:///{db}", "--listen", f"127.0.0.1:{port}", "--idle-timeout", "2",
        "--stdio", f"ledger={sys.executable} {LEDGER} {state}",
    ]  # fmt: skip

    async def one_call(mode: str) -> bool:
        async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
            got = await client.call_tool("ledger.balance", {"account": mode})
            return got.is_error

    with _serving(command, port) as proc:
        # A session the client closes (the SDK sends DELETE): its run ends at once.
        assert anyio.run(one_call, "legacy") is False
        _until(lambda: _status(db) == ["ok"], within=1.5)

        with httpx.Client(timeout=10) as http:
            # A client drops its connection during a short write: the call runs on and is
            # recorded (a disconnection is not a cancellation in MCP); others are served.
            short = _open_session(http, url)
            with pytest.raises(httpx.ReadTimeout):
                http.post(url, headers=short, json=_pay(0.8, "short"), timeout=0.3)
            assert anyio.run(one_call, "2026-07-28") is False  # served meanwhile
            _until(lambda: (state / "payments.log").exists(), within=5)
            # A client drops out during a long write and never comes back: at its session's
            # idle timeout the call is cancelled, its claim left unknown, its run stopped.
            long = _open_session(http, url)
            with pytest.raises(httpx.ReadTimeout):
                http.post(url, headers=long, json=_pay(30, "long"), timeout=0.3)
        # The idle sessions (the two dropped ones, the stateless client) end with their runs.
        _until(lambda: "running" not in _status(db) and len(_runs(db)) == 4, within=10)
        assert proc.poll() is None  # still serving
    runs = _runs(db)
    assert sorted((r.status, r.stop_reason) for r in runs) == [
        ("ok", "ok"), ("ok", "ok"), ("ok", "ok"), ("stopped", "cancelled")
    ], runs  # fmt: skip
    assert (state / "payments.log").read_text() == "short 1\n"
    with SQLiteStore(db) as store:
        claims = {c.key.rsplit(":", 1)[-1]: c.status for c in store.list_claims(now=time.time())}
        outcomes = sorted(
            e.data["outcome"] for r in runs for e in store.events(r.id) if e.kind == "tool_call"
        )
    assert claims == {"short": "done", "long": "unknown"}
    assert outcomes == ["cancelled", "ok", "ok", "ok"]


def test_corral_serve_serves_the_mcp_proxy_beside_the_control_plane(tmp_path: Path) -> None:
    state = tmp_path / "ledger"
    state.mkdir()
    policy_file = tmp_path / "mcp-policy.json"
    policy_file.write_text(json.dumps(POLICY))
    db = tmp_path / "corral.db"
    port = free_port()
    command = [
        sys.executable, "-m", "corral", "serve", "--db", f"sqlite:///{db}", "--port", str(port),
        "--advertise", "none", "--log-level", "warning", "--mcp-policy", str(policy_file),
        "--mcp-stdio", f"ledger={sys.executable} {LEDGER} {state}", "--mcp-tenant", "acme",
    ]  # fmt: skip

    async def calls(mode: str) -> list[str]:
        async with Client(f"http://127.0.0.1:{port}/mcp", mode=mode) as client:  # type: ignore[arg-type]
            names = sorted(t.name for t in (await client.list_tools()).tools)
            got = await client.call_tool("ledger.balance", {"account": mode})
            assert not got.is_error
            return names

    with _serving(command, port) as proc:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert anyio.run(calls, "legacy") == ["ledger.balance", "ledger.slow_pay"]
        assert anyio.run(calls, "2026-07-28") == ["ledger.balance", "ledger.slow_pay"]
        unauthorized = httpx.get(f"http://127.0.0.1:{port}/v1/runs")
        assert unauthorized.status_code == 401  # the control plane as ever
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    runs = _runs(db)
    assert len(runs) == 2 and {r.tenant for r in runs} == {"acme"}
    assert {r.status for r in runs} == {"ok"}  # the stateless client's ended at the stop


def test_corral_serve_mcp_options_need_a_policy(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corral.cli.app import app

    got = CliRunner().invoke(app, ["serve", "--db", f"sqlite:///{tmp_path / 'c.db'}",
                                   "--mcp-stdio", "a=b"])  # fmt: skip
    assert got.exit_code == 2 and "--mcp-policy" in got.output
