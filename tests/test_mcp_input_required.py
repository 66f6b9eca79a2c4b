"""Approvals answered ``input_required`` to 2026-07-28 MCP clients, with the official ``mcp``
client (pinned to the 2026-07-28 era) over corral's proxy to the tests' ledger server, the
approval given or refused by the real ``corral approvals`` CLI against a SQLite store: the
first call files the approval and is answered ``input_required`` at once (nothing paid); a
retry with the state is told it is still pending, runs the write once after the approval and
is refused ``approval_denied`` after a denial; the state replayed by another requester or
with other arguments is refused; a 2025-11-25 client keeps the held call.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, MCPError, StdioServerParameters

import corral
from corral.controls import killswitch
from corral.mcp.deferred import PENDING_META
from corral.mcp.proxy import Proxy, Upstream
from corral.stores.sqlite import SQLiteStore
from serving import free_port

pytest.importorskip("mcp_server_time", reason="the MCP extra's test servers")

SRC = str(Path(corral.__file__).resolve().parent.parent)
LEDGER = Path(__file__).parent / "fixtures" / "mcp" / "ledger_server.py"
PAY = {"account": "acme", "amount": 5}

POLICY = {
    "tools": {
        "allow": ["ledger.balance", "ledger.pay"],
        "specs": {"ledger.balance": {"effect": "read", "cache": False}},
    },
    "writes": {"require_approval": True, "approval_timeout_seconds": 30},
}


def _text(result: types.CallToolResult) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, types.TextContent))


def _cli(db: Path, *args: str) -> str:
    """``corral approvals ARGS --db`` in another process."""
    done = subprocess.run(
        [sys.executable, "-m", "corral", "approvals", *args, "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def _serving(command: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "corral mcp serve --listen did not start"
                time.sleep(0.1)
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=30)


def _paid(state: Path) -> list[str]:
    log = state / "payments.log"
    return log.read_text().splitlines() if log.exists() else []


class Case:
    """A proxy over the ledger (a SQLite store in a tmp dir) and what a test does with it."""

    def __init__(self, tmp_path: Path, policy: dict[str, Any] = POLICY) -> None:
        self.db = tmp_path / "corral.db"
        self.state = tmp_path / "ledger"
        self.state.mkdir()
        self.raw = policy
        self.policy = corral.Policy.from_dict(policy)

    def upstream(self) -> Upstream:
        return Upstream(
            "ledger",
            StdioServerParameters(command=sys.executable, args=[str(LEDGER), str(self.state)]),
        )

    def serve_stdio(self, *more: str) -> StdioServerParameters:
        """``corral mcp serve`` over stdio, on this case's store (``more``: its options)."""
        policy_file = self.db.parent / "policy.json"
        policy_file.write_text(json.dumps(self.raw))
        command = [
            "-m", "corral", "mcp", "serve", "--policy", str(policy_file),
            "--db", f"sqlite:///{self.db}",
            "--stdio", f"ledger={sys.executable} {LEDGER} {self.state}", *more,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": SRC}
        return StdioServerParameters(command=sys.executable, args=command, env=env)

    def proxy(self, store: SQLiteStore) -> Proxy:
        return Proxy(self.policy, [self.upstream()], store=store)


@contextmanager
def _approver(case: Case, *more: str) -> Iterator[threading.Thread]:
    """A thread (not yet started) that approves the first approval filed in ``case``'s store
    with the CLI (``more``: its options); stopped and joined on leaving."""
    stop = threading.Event()

    def approve_when_filed() -> None:
        with SQLiteStore(case.db) as other:
            while not stop.is_set():
                for request in other.list_approvals(status="pending"):
                    _cli(case.db, "approve", request.id, *more)
                    return
                time.sleep(0.05)

    helper = threading.Thread(target=approve_when_filed)
    try:
        yield helper
    finally:
        stop.set()
        if helper.is_alive():
            helper.join(30)


async def _ask(client: Client, arguments: dict[str, Any], state: str | None = None) -> Any:
    return await client.session.call_tool(
        "ledger.pay", arguments, request_state=state, allow_input_required=True
    )


def _approval_id(result: types.InputRequiredResult) -> str:
    meta = result.meta or {}
    return str(meta[PENDING_META]["id"])


def test_a_write_is_answered_input_required_and_runs_once_after_the_cli_approves(
    tmp_path: Path,
) -> None:
    case = Case(tmp_path)

    async def go() -> None:
        store = SQLiteStore(case.db)
        try:
            async with case.proxy(store) as proxy, Client(
                proxy.server(), mode="2026-07-28"
            ) as client:  # fmt: skip
                assert client.protocol_version == "2026-07-28"
                started = time.monotonic()
                first = await _ask(client, PAY)
                assert isinstance(first, types.InputRequiredResult), first
                assert first.request_state and not first.input_requests
                assert time.monotonic() - started < 5  # answered, not held
                approval = _approval_id(first)
                [pending] = store.list_approvals(status="pending")
                assert pending.id == approval and pending.tool == "ledger.pay"
                assert pending.arguments == PAY
                assert _paid(case.state) == []
                # The sealed state is opaque: it names nothing the client can read.
                assert approval not in first.request_state

                again = await _ask(client, PAY, first.request_state)
                assert isinstance(again, types.InputRequiredResult)  # still pending
                assert again.meta and again.meta[PENDING_META] == {
                    "id": approval,
                    "status": "pending",
                }
                assert _paid(case.state) == []

                out = await anyio.to_thread.run_sync(_cli, case.db, "approve", approval)
                assert approval in out
                done = await _ask(client, PAY, again.request_state)
                assert isinstance(done, types.CallToolResult), done
                assert not done.is_error and _text(done) == "paid"
                assert _paid(case.state) == ["acme 5"]
                assert store.get_approval(approval).status == "used"  # type: ignore[union-attr]

                # The same state once more: the approval is spent, nothing runs again.
                spent = await _ask(client, PAY, again.request_state)
                assert isinstance(spent, types.CallToolResult) and spent.is_error
                assert _text(spent).startswith("approval_used:ledger.pay"), _text(spent)
                assert _paid(case.state) == ["acme 5"]

                # Reads are not asked about.
                read = await client.call_tool("ledger.balance", {"account": "acme"})
                assert not read.is_error
        finally:
            store.close()

    anyio.run(go)


def test_the_clients_own_driver_retries_until_the_cli_approves(tmp_path: Path) -> None:
    """``corral mcp serve`` over stdio, as a desktop client runs it: the first answer is
    ``input_required``; the SDK client's own ``call_tool``, seeded with its state, retries
    (backing off) until the CLI approves, then gets the write's result."""
    case = Case(tmp_path)

    async def go() -> str:
        with _approver(case, "--reason", "checked") as helper:
            async with Client(
                case.serve_stdio(), mode="2026-07-28", input_required_max_rounds=200
            ) as client:  # fmt: skip
                assert client.protocol_version == "2026-07-28"
                first = await _ask(client, PAY)
                assert isinstance(first, types.InputRequiredResult), first
                assert _paid(case.state) == []
                helper.start()
                done = await client.call_tool("ledger.pay", PAY, request_state=first.request_state)
                return _text(done)

    assert anyio.run(go) == "paid"
    assert _paid(case.state) == ["acme 5"]


def test_a_denial_from_the_cli_is_approval_denied(tmp_path: Path) -> None:
    case = Case(tmp_path)

    async def go() -> None:
        store = SQLiteStore(case.db)
        try:
            async with case.proxy(store) as proxy, Client(
                proxy.server(), mode="2026-07-28"
            ) as client:  # fmt: skip
                first = await _ask(client, PAY)
                assert isinstance(first, types.InputRequiredResult)
                approval = _approval_id(first)
                await anyio.to_thread.run_sync(
                    _cli, case.db, "deny", approval, "--reason", "not this month"
                )
                denied = await _ask(client, PAY, first.request_state)
                assert isinstance(denied, types.CallToolResult) and denied.is_error
                text = _text(denied)
                assert text.startswith("approval_denied:ledger.pay"), text
                assert "not this month" in text
        finally:
            store.close()

    anyio.run(go)
    assert _paid(case.state) == []


def test_a_state_replayed_by_another_requester_or_with_other_arguments_is_refused(
    tmp_path: Path,
) -> None:
    """Over streamable HTTP (``corral mcp serve --listen``), where each stateless client is a
    requester of its own (its address and the name it gives)."""
    pytest.importorskip("uvicorn", reason="--listen needs the serve extra")
    case = Case(tmp_path)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    port = free_port()
    command = [
        sys.executable, "-m", "corral", "mcp", "serve", "--policy", str(policy_file),
        "--db", f"sqlite:///{case.db}", "--listen", f"127.0.0.1:{port}",
        "--stdio", f"ledger={sys.executable} {LEDGER} {case.state}",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/mcp"

    def client(name: str) -> Client:
        info = types.Implementation(name=name, version="1")
        return Client(url, mode="2026-07-28", client_info=info)

    async def go() -> None:
        async with client("alice") as alice, client("bob") as bob:
            first = await _ask(alice, PAY)
            assert isinstance(first, types.InputRequiredResult), first
            approval = _approval_id(first)
            await anyio.to_thread.run_sync(_cli, case.db, "approve", approval)
            # Another requester replays the state.
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await _ask(bob, PAY, first.request_state)
            # The same requester, other arguments.
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await _ask(alice, {"account": "acme", "amount": 500}, first.request_state)
            # A state made up by the client.
            with pytest.raises(MCPError, match="Invalid or expired requestState"):
                await _ask(alice, PAY, "v1.forged")
            assert _paid(case.state) == []
            # The requester it is bound to still gets its write, once.
            done = await _ask(alice, PAY, first.request_state)
            assert isinstance(done, types.CallToolResult) and not done.is_error, done
            assert _text(done) == "paid"

    with _serving(command, port):
        anyio.run(go)
    assert _paid(case.state) == ["acme 5"]
    with SQLiteStore(case.db) as store:
        assert [a.status for a in store.list_approvals(status=None)] == ["used"]


def test_an_approval_nobody_decides_in_time_is_approval_timeout(tmp_path: Path) -> None:
    policy = {**POLICY, "writes": {"require_approval": True, "approval_timeout_seconds": 0.5}}
    case = Case(tmp_path, policy)

    async def go() -> None:
        store = SQLiteStore(case.db)
        try:
            async with case.proxy(store) as proxy, Client(
                proxy.server(), mode="2026-07-28"
            ) as client:  # fmt: skip
                first = await _ask(client, PAY)
                assert isinstance(first, types.InputRequiredResult)
                await anyio.sleep(0.6)
                late = await _ask(client, PAY, first.request_state)
                assert isinstance(late, types.CallToolResult) and late.is_error
                assert _text(late).startswith("approval_timeout:ledger.pay"), _text(late)
                [expired] = store.list_approvals(status=None)
                assert expired.status == "expired"
        finally:
            store.close()

    anyio.run(go)
    assert _paid(case.state) == []


def test_a_kill_switch_while_the_approval_is_pending_refuses_the_retry(tmp_path: Path) -> None:
    case = Case(tmp_path)

    async def go() -> None:
        store = SQLiteStore(case.db)
        try:
            async with case.proxy(store) as proxy, Client(
                proxy.server(), mode="2026-07-28"
            ) as client:  # fmt: skip
                first = await _ask(client, PAY)
                assert isinstance(first, types.InputRequiredResult)
                approval = _approval_id(first)
                killswitch.enable(store, reason="incident", actor="ops")
                await anyio.sleep(0.15)  # past the switch cache's refresh (0.1 s)
                refused = await _ask(client, PAY, first.request_state)
                assert isinstance(refused, types.CallToolResult) and refused.is_error
                assert _text(refused).startswith("kill_switch"), _text(refused)
                assert store.get_approval(approval).status == "cancelled"  # type: ignore[union-attr]
        finally:
            store.close()

    anyio.run(go)
    assert _paid(case.state) == []


def test_a_2025_11_25_client_keeps_the_held_call(tmp_path: Path) -> None:
    case = Case(tmp_path)

    async def go() -> str:
        store = SQLiteStore(case.db)
        try:
            with _approver(case) as helper:
                helper.start()
                async with case.proxy(store) as proxy, Client(
                    proxy.server(), mode="legacy"
                ) as client:  # fmt: skip
                    assert client.protocol_version == "2025-11-25"
                    # One call, held until the approval: never input_required.
                    result = await client.session.call_tool(
                        "ledger.pay", PAY, allow_input_required=True
                    )
                    assert isinstance(result, types.CallToolResult)
                    return _text(result)
        finally:
            store.close()

    assert anyio.run(go) == "paid"
    assert _paid(case.state) == ["acme 5"]


def test_hold_approvals_holds_a_2026_07_28_clients_call(tmp_path: Path) -> None:
    """``corral mcp serve --hold-approvals``: a 2026-07-28 client's write that needs approval
    is held until the CLI approves it, as a 2025-11-25 client's is, never input_required."""
    case = Case(tmp_path)

    async def go() -> Any:
        with _approver(case) as helper:
            helper.start()
            async with Client(case.serve_stdio("--hold-approvals"), mode="2026-07-28") as client:
                assert client.protocol_version == "2026-07-28"
                return await _ask(client, PAY)

    result = anyio.run(go)
    assert isinstance(result, types.CallToolResult), result
    assert _text(result) == "paid" and _paid(case.state) == ["acme 5"]
