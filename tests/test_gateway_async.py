"""The tool gateway from async code: deadlines for async and sync tools, retries, charges,
approvals, authorize / report, and concurrent calls against one budget."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import corral
from corral.testing import ManualClock

P = corral.Policy.from_dict


def allow(*names: str, approval: bool = False, **sections: Any) -> corral.Policy:
    tools = {"allow": list(names), **sections.pop("tools", {})}
    return P({"tools": tools, "writes": {"require_approval": approval}, **sections})


def assert_on_time(at: dict[str, float]) -> None:
    """A ``max_seconds: 0.5`` stop on time: no sooner than 0.5 s after the run was asked
    for, no later than 0.6 s after it was made (its clock starts while it is made, and a
    first run in the process also imports what it uses; its own ending is not counted)."""
    assert at["stopped"] - at["asked"] >= 0.45
    assert at["stopped"] - at["made"] <= 0.6


def test_a_hung_async_tool_is_cancelled_at_the_run_deadline(store):
    """``max_seconds: 0.5`` with an async tool sleeping 5 s stops within ~0.5 s + 100 ms."""
    cancelled = []

    @corral.tool(name="slow.read", effect="read")
    async def slow(q: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(q)
            raise
        return "late"

    at: dict[str, float] = {}

    async def agent() -> corral.AsyncRun:
        at["asked"] = time.monotonic()
        async with corral.AsyncRun(
            allow("slow.read", budgets={"max_seconds": 0.5}), tools=[slow], store=store
        ) as run:
            at["made"] = time.monotonic()
            try:
                await run.call("slow.read", {"q": "x"})
            finally:
                at["stopped"] = time.monotonic()
        return run

    run = asyncio.run(agent())
    assert run.result.stop_reason == "max_seconds"
    assert_on_time(at)
    assert cancelled == ["x"]
    assert run.result.usage.tool_calls == 1


def test_a_hung_sync_tool_in_async_code_is_abandoned_without_blocking_the_loop(store):
    """A sync tool runs off the event loop: other tasks keep running, and the deadline holds."""
    release = threading.Event()
    ticks = []

    @corral.tool(name="slow.read", effect="read")
    def slow(q: str) -> str:
        release.wait(5)
        return "late"

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    at: dict[str, float] = {}

    async def agent() -> corral.AsyncRun:
        beat = asyncio.create_task(ticker())
        at["asked"] = time.monotonic()
        async with corral.AsyncRun(
            allow("slow.read", budgets={"max_seconds": 0.5}), tools=[slow], store=store
        ) as run:
            at["made"] = time.monotonic()
            try:
                await run.call("slow.read", {"q": "x"})
            finally:
                at["stopped"] = time.monotonic()
        beat.cancel()
        return run

    run = asyncio.run(agent())
    release.set()
    assert run.result.stop_reason == "max_seconds"
    assert_on_time(at)
    assert len(ticks) >= 5


def test_an_async_tool_called_from_sync_code_also_meets_the_deadline(store):
    """``Run`` (sync) with an async tool stops at ``max_seconds`` too."""

    @corral.tool(name="slow.read", effect="read")
    async def slow(q: str) -> str:
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    with corral.Run(
        allow("slow.read", budgets={"max_seconds": 0.5}), tools=[slow], store=store
    ) as run:
        run.call("slow.read", {"q": "x"})
    assert run.result.stop_reason == "max_seconds"
    assert time.monotonic() - started <= 0.6


def test_an_async_tool_timeout_ends_in_tool_error_after_its_retries(store):
    """A per-tool timeout shorter than the run: each attempt is cut, then ``tool_error``."""
    attempts = []

    @corral.tool(name="slow.read", effect="read", timeout=0.05, retries=1, cost_usd="0.1")
    async def slow(q: str) -> str:
        attempts.append(q)
        await asyncio.sleep(1)
        return "late"

    async def agent() -> corral.AsyncRun:
        async with corral.AsyncRun(allow("slow.read"), tools=[slow], store=store) as run:
            await run.call("slow.read", {"q": "x"})
        return run

    run = asyncio.run(agent())
    assert run.result.stop_reason == "tool_error"
    assert run.result.stop.extra["attempts"] == 2
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (2, Decimal("0.2"))
    assert len(attempts) == 2


def test_a_flaky_async_read_recovers_and_every_attempt_is_charged(store):
    """Fails twice, then succeeds with ``retries: 2``: ok, three attempts charged."""
    attempts = []

    @corral.tool(name="vendor.read", effect="read", retries=2, cost_usd="0.05")
    async def vendor(q: str) -> str:
        attempts.append(q)
        if len(attempts) < 3:
            raise ConnectionError("vendor down")
        return "up"

    async def agent() -> corral.AsyncRun:
        async with corral.AsyncRun(
            allow("vendor.read"), tools=[vendor], store=store, clock=ManualClock()
        ) as run:
            assert await run.call("vendor.read", {"q": "x"}) == "up"
        return run

    run = asyncio.run(agent())
    assert run.result.status == "ok"
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (3, Decimal("0.15"))


def test_an_async_denied_call_is_refunded(store):
    """A call the allowlist denies costs nothing in async code either."""
    ran = []

    @corral.tool(name="browser.open", effect="read", cost_usd="1")
    async def browser(q: str) -> str:
        ran.append(q)
        return "page"

    async def agent() -> corral.AsyncRun:
        async with corral.AsyncRun(allow(), tools=[browser], store=store) as run:
            await run.call("browser.open", {"q": "x"})
        return run

    run = asyncio.run(agent())
    assert str(run.result.stop) == "tool_denied:browser.open"
    assert (run.result.usage.tool_calls, run.result.usage.usd, ran) == (0, 0, [])


def test_an_async_approver_is_awaited_and_its_wait_is_not_charged(store):
    """A coroutine approver is awaited; the time it takes is waiting, not active time."""
    clock = ManualClock()
    paid = []

    @corral.tool(name="pay.send", effect="write")
    async def pay(q: str) -> str:
        paid.append(q)
        return "paid"

    async def approver(request: corral.ApprovalRequest) -> corral.ApprovalDecision:
        await asyncio.sleep(0)
        clock.advance(300)
        return corral.ApprovalDecision(approved=True, approver="oncall")

    async def agent() -> corral.AsyncRun:
        policy = allow("pay.send", approval=True, budgets={"max_seconds": 10})
        async with corral.AsyncRun(
            policy, tools=[pay], store=store, clock=clock, approver=approver
        ) as run:
            assert await run.call("pay.send", {"q": "x"}) == "paid"
        return run

    run = asyncio.run(agent())
    assert run.result.status == "ok"
    assert paid == ["x"]
    assert run.result.usage.waiting_seconds == 300


def test_an_async_approver_that_raises_refuses_the_call(store):
    """A failing async approval channel: ``control_plane_unavailable``, nothing runs."""
    paid = []

    @corral.tool(name="pay.send", effect="write")
    async def pay(q: str) -> str:
        paid.append(q)
        return "paid"

    async def approver(request: corral.ApprovalRequest) -> bool:
        raise ConnectionError("approvals service down")

    async def agent() -> corral.AsyncRun:
        async with corral.AsyncRun(
            allow("pay.send", approval=True), tools=[pay], store=store, approver=approver
        ) as run:
            await run.call("pay.send", {"q": "x"})
        return run

    run = asyncio.run(agent())
    assert run.result.stop_reason == "control_plane_unavailable"
    assert paid == []


def test_async_authorize_and_report(store):
    """``await run.authorize`` / ``await run.report`` settle like the sync pair."""
    tool = corral.tool(lambda q: "never", name="search.read", effect="read", cost_usd="0.5")

    async def agent() -> corral.AsyncRun:
        async with corral.AsyncRun(allow("search.read"), tools=[tool], store=store) as run:
            ticket = await run.authorize("search.read", {"q": "x"})
            assert await run.report(ticket, "<i>found</i>") == "found"
            again = await run.authorize("search.read", {"q": "x"})
            assert again.replayed and again.output == "found"
        return run

    run = asyncio.run(agent())
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (1, Decimal("0.5"))


def test_concurrent_calls_in_one_run_never_pass_the_call_cap(store):
    """Twenty calls gathered at once against ``max_tool_calls: 5``: exactly five run."""
    started = []

    @corral.tool(name="search.read", effect="read")
    async def search(q: str) -> str:
        started.append(q)
        await asyncio.sleep(0.01)
        return q

    async def agent() -> tuple[corral.AsyncRun, list[Any]]:
        policy = allow("search.read", budgets={"max_tool_calls": 5})
        async with corral.AsyncRun(policy, tools=[search], store=store) as run:
            outcomes = await asyncio.gather(
                *(run.call("search.read", {"q": str(i)}) for i in range(20)),
                return_exceptions=True,
            )
        return run, outcomes

    run, outcomes = asyncio.run(agent())
    assert len(started) == 5
    assert sum(isinstance(o, str) for o in outcomes) == 5
    assert all(isinstance(o, corral.Stop) for o in outcomes if not isinstance(o, str))
    assert run.result.usage.tool_calls == 5
    assert run.result.stop_reason == "max_tool_calls"


def test_concurrent_calls_in_one_run_never_pass_the_usd_cap(store):
    """Concurrent priced calls: spend never passes ``max_usd``, not even by one call."""
    started = []

    @corral.tool(name="llm.read", effect="read", cost_usd="0.30")
    async def llm(q: str) -> str:
        started.append(q)
        await asyncio.sleep(0.01)
        return q

    async def agent() -> corral.AsyncRun:
        policy = allow("llm.read", budgets={"max_usd": 1, "max_tool_calls": 50})
        async with corral.AsyncRun(policy, tools=[llm], store=store) as run:
            await asyncio.gather(
                *(run.call("llm.read", {"q": str(i)}) for i in range(20)), return_exceptions=True
            )
        return run

    run = asyncio.run(agent())
    assert len(started) == 3
    assert run.result.usage.usd == Decimal("0.90")
    assert str(run.result.stop) == "max_usd:run (limit 1.00, would be 1.20)"
