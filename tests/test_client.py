"""``corral.client``: the in-process interface over HTTP — local tools executed here and
decided by a real ``corral serve`` (real sockets, real SQLite), approvals, model calls,
the ``with`` block's ends, async, and failing closed when the server is gone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")

import corral
from corral.client import AsyncRun, Run
from corral.exceptions import ConfigError, Forbidden, InvalidKey
from corral.stores.sqlite import SQLiteStore
from serving import Served, free_port, serving

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
POLICY = corral.Policy.from_dict(
    {
        "tools": {
            "allow": ["kb.read", "kb.aread", "refund.send"],
            "specs": {
                "kb.read": {"effect": "read", "args_schema": SCHEMA, "cache": False},
                "kb.aread": {"effect": "read", "args_schema": SCHEMA, "cache": False},
                "refund.send": {
                    "effect": "write",
                    "args_schema": {
                        "type": "object",
                        "properties": {"amount": {"type": "integer"}},
                        "required": ["amount"],
                    },
                },
            },
        },
        "writes": {"require_approval": True, "approval_timeout_seconds": 20},
        "budgets": {"max_tool_calls": 5, "max_tokens": 1000},
        "models": {"prices": {"m-1": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 2}}},
    }
)


class Tools:
    """The agent's own tools, counting what ran here."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        def read(q: str) -> dict[str, Any]:
            self.ran.append(f"read {q}")
            if q == "boom":
                raise RuntimeError("the knowledge base is down")
            return {"q": q, "status": "up"}

        async def aread(q: str) -> str:
            self.ran.append(f"aread {q}")
            await asyncio.sleep(0)
            return f"async {q}"

        def send(amount: int) -> str:
            self.ran.append(f"send {amount}")
            return f"sent {amount}"

        self.all = [
            corral.tool(read, name="kb.read", effect="read"),
            corral.tool(aread, name="kb.aread", effect="read"),
            corral.tool(send, name="refund.send", effect="write"),
        ]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    store = SQLiteStore(str(tmp_path / "corral.db"))
    try:
        with serving(store, policies={"support": POLICY}) as running:
            yield running
    finally:
        store.close()


def test_calls_run_here_and_are_decided_there(served: Served) -> None:
    tools = Tools()
    key = served.keys["acme-agent"]
    with Run(POLICY, tools=tools.all, server=served.url, key=key, agent="bot") as run:
        run.step()
        assert run.call("kb.read", {"q": "x"}) == {"q": "x", "status": "up"}
        with pytest.raises(corral.ToolRejected) as bad:
            run.call("kb.read", {"q": 1})
        assert bad.value.reason == "invalid_tool_args"
        assert len(run.tool_specs("anthropic")) == 3
        run.finish("done")
    assert tools.ran == ["read x"]  # the invalid call never ran
    assert run.result.status == "ok" and run.result.answer == "done"
    assert run.result.usage.tool_calls == 1 and run.result.usage.steps == 1
    record = served.store.get_run(run.id)
    assert record is not None and record.tenant == "acme" and record.status == "ok"


def test_a_stop_ends_the_block_and_is_the_runs_result(served: Served) -> None:
    tools = Tools()
    with Run("support", tools=tools.all, server=served.url, key=served.keys["acme-agent"]) as run:
        for n in range(10):
            run.call("kb.read", {"q": f"n{n}"})
    assert run.result.stop_reason == "max_tool_calls" and run.result.status == "stopped"
    assert len(tools.ran) == 5
    with pytest.raises(corral.Stop):  # the run's stop, again
        run.step()


def test_a_write_waits_for_the_approval_then_replays(served: Served) -> None:
    tools = Tools()
    key = served.keys["acme-agent"]

    def approve_when_asked() -> None:
        with served.client("acme-approver") as http:
            deadline = time.monotonic() + 20
            while not (found := http.get("/v1/approvals").json()["approvals"]):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            http.post(f"/v1/approvals/{found[0]['id']}/approve", json={"reason": "ok"})

    approver = threading.Thread(target=approve_when_asked)
    approver.start()
    with Run(POLICY, tools=tools.all, server=served.url, key=key) as run:
        first = run.call("refund.send", {"amount": 3}, idempotency_key="order-9")
        again = run.call("refund.send", {"amount": 3}, idempotency_key="order-9")
    approver.join(20)
    assert first == again == "sent 3" and tools.ran == ["send 3"]  # once
    assert run.result.usage.tool_calls == 1


def test_a_failing_tool_and_an_agent_error_end_the_run_as_in_process(served: Served) -> None:
    tools = Tools()
    key = served.keys["acme-agent"]
    with Run(POLICY, tools=tools.all, server=served.url, key=key) as run:
        run.call("kb.read", {"q": "boom"})
    assert run.result.stop_reason == "tool_error"
    with (
        pytest.raises(ZeroDivisionError),
        Run(POLICY, tools=tools.all, server=served.url, key=key) as failing,
    ):
        failing.step()
        _ = 1 / 0
    assert failing.result.stop_reason == "agent_error"
    record = served.store.get_run(failing.id)
    assert record is not None and record.stop_reason == "agent_error"


def test_model_calls_are_reserved_and_settled(served: Served) -> None:
    with Run(POLICY, server=served.url, key=served.keys["acme-agent"]) as run:
        with run.model_call(model="m-1", input_tokens=100, max_tokens=5000) as mc:
            assert mc.max_tokens == 900
            mc.settle(input_tokens=100, output_tokens=50)
        with run.model_call(model="m-1", input_tokens=100, max_tokens=10):
            pass  # not settled: the worst case (100 + 10) is charged
    usage = run.result.usage
    assert (usage.input_tokens, usage.output_tokens) == (200, 60)


def test_async_runs_async_and_sync_tools(served: Served) -> None:
    tools = Tools()

    async def agent() -> Any:
        key = served.keys["acme-agent"]
        async with AsyncRun(POLICY, tools=tools.all, server=served.url, key=key) as run:
            await run.step()
            got = await asyncio.gather(
                run.call("kb.aread", {"q": "a"}), run.call("kb.read", {"q": "b"})
            )
            async with await run.model_call(model="m-1", input_tokens=10) as mc:
                await mc.settle(input_tokens=10, output_tokens=5)
            await run.finish("ok")
        return got, run.result

    got, result = asyncio.run(agent())
    assert got == ["async a", {"q": "b", "status": "up"}]
    assert sorted(tools.ran) == ["aread a", "read b"]
    assert result.status == "ok" and result.usage.tool_calls == 2


def test_wrong_keys_and_policies_raise_at_once(served: Served) -> None:
    with pytest.raises(InvalidKey):
        Run(POLICY, server=served.url, key="crl_" + "0" * 16 + "_" + "a" * 43)
    with pytest.raises(Forbidden):
        Run(POLICY, server=served.url, key=served.keys["acme-approver"])
    other = corral.Policy.from_dict({"tools": {"allow": []}})
    with pytest.raises(ConfigError, match="no policy with digest"):
        Run(other, server=served.url, key=served.keys["acme-agent"])
    with pytest.raises(ConfigError, match="CORRAL_KEY"):
        Run(POLICY, server=served.url, key="")


def test_an_unreachable_server_is_a_stop_never_an_allow() -> None:
    tools = Tools()
    url = f"http://127.0.0.1:{free_port()}"
    with Run(POLICY, tools=tools.all, server=url, key="crl_x", timeout=2) as run:
        run.call("kb.read", {"q": "x"})
    assert tools.ran == []
    assert run.result.stop_reason == "control_plane_unavailable"
    assert "cannot reach the server" in (run.result.stop.message if run.result.stop else "")


def test_a_server_gone_mid_run_stops_the_run_and_nothing_runs_unasked(tmp_path: Path) -> None:
    tools = Tools()
    store = SQLiteStore(str(tmp_path / "gone.db"))
    try:
        with serving(store, policies={"support": POLICY}) as served:
            run = Run(POLICY, tools=tools.all, server=served.url, key=served.keys["acme-agent"])
            assert run.call("kb.read", {"q": "before"}) == {"q": "before", "status": "up"}
        with run:
            run.call("kb.read", {"q": "after"})
        assert tools.ran == ["read before"]
        assert run.result.stop_reason == "control_plane_unavailable"
    finally:
        store.close()


def test_moving_to_the_server_is_one_argument(served: Served) -> None:
    """``corral.Run(..., server=URL)`` is the remote run; ``store=`` and the other things
    only a local run has are refused beside it."""
    tools = Tools()
    key = served.keys["acme-agent"]
    with corral.Run(POLICY, tools=tools.all, server=served.url, key=key) as run:
        assert isinstance(run, Run)
        assert run.call("kb.read", {"q": "one"}) == {"q": "one", "status": "up"}
    assert run.result.usage.tool_calls == 1 and tools.ran == ["read one"]

    async def agent() -> Any:
        async with corral.AsyncRun(POLICY, tools=tools.all, server=served.url, key=key) as arun:
            assert isinstance(arun, AsyncRun)
            return await arun.call("kb.aread", {"q": "two"})

    assert asyncio.run(agent()) == "async two"
    with pytest.raises(ConfigError, match="store: not with server="):
        corral.Run(POLICY, server=served.url, key=key, store="memory://")
