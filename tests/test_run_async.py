"""``corral.AsyncRun``: the same governed run for async code, every method awaited."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

import corral
from corral.stores import leases
from corral.stores.sqlite import SQLiteStore
from corral.testing import ManualClock, MemoryStore, ScriptedModel, call, final, prices

T = TypeVar("T")


@corral.tool(name="search.read", effect="read")
async def search(query: str) -> str:
    """Search the knowledge base."""
    await asyncio.sleep(0)
    return f"results for {query}"


@corral.tool(name="crm.write", effect="write")
def crm_write(note: str) -> str:
    """Write a note to the CRM."""
    return "saved"


def policy(**sections: Any) -> corral.Policy:
    data: dict[str, Any] = {
        "tools": {"allow": ["search.read", "crm.write"]},
        "writes": {"require_approval": False},
    }
    data.update(sections)
    return corral.Policy.from_dict(data)


def new_run(pol: corral.Policy | None = None, **kw: Any) -> corral.AsyncRun:
    kw.setdefault("store", MemoryStore())
    kw.setdefault("tools", [search, crm_write])
    return corral.AsyncRun(pol or policy(), **kw)


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await fn()

    return asyncio.run(main())


def test_async_step_call_finish_gives_an_ok_result() -> None:
    """Awaited step, call and finish give the same ok result as the sync Run."""

    async def main() -> corral.RunResult:
        async with new_run(tenant="acme", agent="bot") as run:
            await run.step()
            obs = await run.call("search.read", {"query": "vendor"})
            result = await run.finish(obs)
            assert result is run.result
        return run.result

    result = run_async(main)
    assert (result.status, result.stop_reason, result.answer) == ("ok", "ok", "results for vendor")
    assert (result.usage.steps, result.usage.tool_calls) == (1, 1)


def test_async_stop_is_recorded_and_suppressed() -> None:
    """A Stop of this run leaves the async block quietly; the result says why."""

    async def main() -> corral.RunResult:
        async with new_run(policy(budgets={"max_steps": 1})) as run:
            await run.step()
            await run.step()
        return run.result

    assert str(run_async(main).stop) == "max_steps:run (limit 1, would be 2)"


def test_async_unhandled_tool_rejected_stops_the_run() -> None:
    """An unhandled ToolRejected stops the async run with its reason."""

    async def main() -> corral.RunResult:
        async with new_run() as run:
            await run.call("search.read", {"query": 5})
        return run.result

    assert str(run_async(main).stop) == "invalid_tool_args:search.read"


def test_async_other_exception_is_agent_error_and_re_raised() -> None:
    """Another exception in the async block is agent_error, and re-raised."""
    runs: list[corral.AsyncRun] = []

    async def main() -> None:
        async with new_run() as run:
            runs.append(run)
            raise LookupError("no such customer")

    with pytest.raises(LookupError):
        run_async(main)
    assert runs[0].result.stop_reason == "agent_error"
    assert runs[0].result.error == "LookupError: no such customer"


def test_async_cancelled_error_is_cancelled_and_re_raised() -> None:
    """CancelledError inside the block ends the run as cancelled and propagates."""
    runs: list[corral.AsyncRun] = []
    entered = asyncio.Event()

    async def body() -> None:
        async with new_run() as run:
            runs.append(run)
            await run.step()
            entered.set()
            await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_async(main)
    assert str(runs[0].result.stop) == "cancelled:run"
    assert runs[0].result.usage.steps == 1


def test_async_cancel_makes_the_next_call_stop() -> None:
    """run.cancel() makes the next awaited call stop with cancelled."""

    async def main() -> corral.RunResult:
        async with new_run() as run:
            run.cancel()
            await run.call("search.read", {"query": "a"})
        return run.result

    result = run_async(main)
    assert result.stop_reason == "cancelled" and result.usage.tool_calls == 0


def test_async_authorize_waits_for_an_async_approver() -> None:
    """AsyncRun.authorize awaits an async approver, then the caller reports the outcome."""
    asked: list[str] = []

    async def approver(request: corral.ApprovalRequest) -> bool:
        await asyncio.sleep(0)
        asked.append(request.tool)
        return True

    async def main() -> corral.RunResult:
        pol = policy(writes={"require_approval": True})
        async with new_run(pol, approver=approver) as run:
            ticket = await run.authorize("crm.write", {"note": "refund"})
            assert await run.report(ticket, "sent") == "sent"
            await run.finish("done")
        return run.result

    result = run_async(main)
    assert asked == ["crm.write"]
    assert result.stop_reason == "ok" and result.usage.tool_calls == 1


def test_async_report_failure_stops_with_tool_error() -> None:
    """AsyncRun.report_failure ends the run with tool_error."""

    async def main() -> corral.RunResult:
        async with new_run() as run:
            ticket = await run.authorize("search.read", {"query": "a"})
            await run.report_failure(ticket, ConnectionError("down"))
        return run.result

    assert str(run_async(main).stop) == "tool_error:search.read"


def test_async_call_with_an_async_approver_denying() -> None:
    """An async approver's refusal stops the async run with approval_denied."""

    async def approver(request: corral.ApprovalRequest) -> bool:
        return False

    async def main() -> corral.RunResult:
        async with new_run(policy(writes={"require_approval": True}), approver=approver) as run:
            await run.call("crm.write", {"note": "refund"})
        return run.result

    assert str(run_async(main).stop) == "approval_denied:crm.write"


def test_async_model_call_is_an_async_context_manager() -> None:
    """model_call works as `async with`, reserving before and settling after."""
    pol = policy(
        budgets={"max_usd": 1},
        models={"prices": {"m": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}}},
    )

    async def main() -> corral.RunResult:
        async with new_run(pol) as run:
            async with run.model_call(model="m", input_tokens=100, max_tokens=50) as mc:
                assert mc.max_tokens == 50
                mc.settle(input_tokens=100, output_tokens=20)
            await run.finish("done")
        return run.result

    usage = run_async(main).usage
    assert (usage.steps, usage.input_tokens, usage.output_tokens) == (1, 100, 20)
    assert usage.usd == Decimal("0.00012")


def test_async_model_turn_is_a_governed_step() -> None:
    """model_turn sends the tools on offer and clamps max_tokens; it counts a step."""
    model = ScriptedModel([final("the answer")], price=prices(1, 1))

    async def main() -> corral.RunResult:
        async with new_run(policy(budgets={"max_usd": 1})) as run:
            response = await run.model_turn(model, [{"role": "user", "content": "hi"}])
            await run.finish(response.text)
        return run.result

    result = run_async(main)
    assert result.answer == "the answer" and result.usage.steps == 1
    (request,) = model.requests
    assert sorted(t["name"] for t in request.tools) == ["crm.write", "search.read"]
    assert request.max_tokens == 1024


def test_async_run_and_arun_share_one_store_view() -> None:
    """A run ended by arun is visible in the store with its usage, like a Run."""
    store = MemoryStore()
    model = ScriptedModel([call("search.read", query="a"), final("done")])

    async def main() -> corral.RunResult:
        return await corral.arun(
            "task",
            model=model,
            tools=[search],
            policy=policy(),
            store=store,
            clock=ManualClock(),
        )

    result = run_async(main)
    record = store.get_run(result.run_id)
    assert record is not None
    assert (record.status, record.stop_reason, record.usage["tool_calls"]) == ("ok", "ok", 1)


def test_concurrent_calls_never_pass_the_cap_and_the_run_ends_stopped() -> None:
    """Gathered concurrent calls execute exactly max_tool_calls times; the run ends stopped."""
    executed: list[str] = []

    @corral.tool(name="search.read", effect="read")
    async def slow_search(query: str) -> str:
        await asyncio.sleep(0.01)
        executed.append(query)
        return "r"

    async def main() -> tuple[list[Any], corral.RunResult]:
        pol = policy(budgets={"max_tool_calls": 3})
        async with new_run(pol, tools=[slow_search]) as run:
            outcomes = await asyncio.gather(
                *(run.call("search.read", {"query": str(i)}) for i in range(10)),
                return_exceptions=True,
            )
        return outcomes, run.result

    outcomes, result = run_async(main)
    assert len(executed) == 3
    assert sum(isinstance(o, corral.Stop) for o in outcomes) == 7
    assert str(result.stop) == "max_tool_calls:run (limit 3, would be 4)"
    assert result.usage.tool_calls == 3


# -- bounded waiting: calls that ignore their cancellation ---------------------------------
def test_a_tool_swallowing_its_cancellation_is_abandoned_after_a_short_grace() -> None:
    """The issue's example: an async tool that catches CancelledError and sleeps 2 s more
    held the run 2 s past max_seconds; it is now abandoned after a grace of ~50 ms."""

    @corral.tool(name="search.read", effect="read")
    async def stubborn(query: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(2)
        return "late"

    async def main() -> tuple[corral.RunResult, float]:
        async with new_run(policy(budgets={"max_seconds": 0.3}), tools=[stubborn]) as run:
            started = time.monotonic()  # the run's clock started while it was made
            await run.call("search.read", {"query": "a"})
        return run.result, time.monotonic() - started

    result, elapsed = run_async(main)
    assert result.stop_reason == "max_seconds"
    assert elapsed < 0.3 + 0.15


def test_an_abandoned_async_write_keeps_its_key_in_flight_until_it_ends(tmp_path: Path) -> None:
    """A write that ignores its cancellation is abandoned at its deadline but may still
    happen: its claim stays renewed (in flight) while it runs, and lapses to unknown once
    it has ended with no outcome recorded."""
    lease = 0.4
    quick = corral.Services(renewer=leases.Renewer(interval=0.1, lease=lease))
    store = SQLiteStore(tmp_path / "corral.db")

    def states() -> set[str]:
        return {c.status for c in store.list_claims(now=time.time())}

    async def main() -> tuple[corral.RunResult, set[str], set[str]]:
        release = asyncio.Event()

        @corral.tool(name="crm.write", effect="write", timeout=0.2)
        async def stubborn_write(note: str) -> str:
            while not release.is_set():
                with contextlib.suppress(asyncio.CancelledError):
                    await release.wait()
            return "saved"

        async with new_run(tools=[stubborn_write], store=store, services=quick) as run:
            await run.call("crm.write", {"note": "refund"}, idempotency_key="N-1")
        await asyncio.sleep(lease + 0.1)
        while_running = states()
        release.set()
        await asyncio.sleep(lease + 0.3)
        return run.result, while_running, states()

    try:
        result, while_running, after = run_async(main)
    finally:
        store.close()
    assert result.stop_reason == "tool_error"  # timed out, with time left in the run
    assert while_running == {"in_flight"}
    assert after == {"unknown"}


def test_a_sync_model_in_async_run_is_bounded_by_the_models_timeout() -> None:
    """A plain (blocking) respond() under AsyncRun is cut at models.timeout_seconds."""

    class Blocking:
        name = "blocking"

        def respond(self, request: Any) -> Any:
            time.sleep(3)
            raise AssertionError("not reached")

    async def main() -> tuple[corral.RunResult, float]:
        async with new_run(policy(models={"timeout_seconds": 0.2})) as run:
            started = time.monotonic()
            await run.model_turn(Blocking(), [{"role": "user", "content": "hi"}])
        return run.result, time.monotonic() - started

    # The price table loads on a process's first lookup (a few hundred ms, once): loaded
    # here, so that what is timed is the model call's bound alone.
    from corral.models import pricing

    pricing.lookup("blocking")
    result, elapsed = run_async(main)
    assert str(result.stop) == "model_error:blocking"
    assert elapsed < 0.2 + 0.15


# -- an async call runs in the caller's task, as if in a task of its own ------------------
def test_a_tool_keeping_its_own_timeout_gets_its_result_and_no_stop() -> None:
    """A tool that bounds its own wait with ``asyncio.timeout`` and handles the expiry
    returns normally: its own cancellation is not taken for the run's or the caller's."""

    @corral.tool(name="search.read", effect="read")
    async def patient(query: str) -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            await asyncio.sleep(0.01)
            return "fallback"
        return "never"

    async def main() -> tuple[Any, corral.RunResult]:
        async with new_run(tools=[patient]) as run:
            out = await run.call("search.read", {"query": "a"})
            await run.finish(out)
        return out, run.result

    out, result = run_async(main)
    assert (out, result.stop_reason) == ("fallback", "ok")


def test_a_tool_setting_a_context_variable_does_not_change_the_callers() -> None:
    """A tool runs in a copy of the caller's context, as a task would: what it sets there
    stays there, whether it finishes at once or after waiting."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="caller")

    @corral.tool(name="search.read", effect="read")
    async def setter(query: str) -> str:
        seen = var.get()
        var.set("tool")
        if query == "wait":
            await asyncio.sleep(0.001)
        return seen + ":" + var.get()

    async def main() -> list[str]:
        var.set("run")
        async with new_run(tools=[setter]) as run:
            outs = [await run.call("search.read", {"query": q}) for q in ("now", "wait")]
            return [*outs, var.get()]

    assert run_async(main) == ["run:tool", "run:tool", "run"]


@pytest.mark.parametrize("swallow", [False, True])
def test_cancelling_the_caller_cancels_the_tool_and_is_re_raised(swallow: bool) -> None:
    """The caller's cancellation reaches the tool where it waits and is re-raised, also
    when the tool swallows it and returns."""
    got: list[str] = []

    @corral.tool(name="search.read", effect="read")
    async def waiting(query: str) -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            got.append("cancelled")
            if not swallow:
                raise
        return "swallowed"

    async def main() -> None:
        async with new_run(tools=[waiting]) as run:
            task = asyncio.ensure_future(run.call("search.read", {"query": "a"}))
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()

    run_async(main)
    assert got == ["cancelled"]


def test_a_tool_using_anyio_cancel_scopes_runs_and_is_cut_at_its_deadline() -> None:
    """anyio's cancel scopes (httpx runs on them) cancel the task they run in: a tool's own
    scope is its business, while the run's deadline still cuts a tool that waits too long."""
    anyio = pytest.importorskip("anyio")

    @corral.tool(name="search.read", effect="read")
    async def scoped(query: str) -> str:
        with anyio.move_on_after(0.01) as scope:
            await anyio.sleep(5)
        if query == "wait":
            await anyio.sleep(5)
        return f"moved on: {scope.cancel_called}"

    async def main() -> tuple[Any, corral.RunResult, float]:
        async with new_run(policy(budgets={"max_seconds": 0.3}), tools=[scoped]) as run:
            started = time.monotonic()  # the run's clock started while it was made
            first = await run.call("search.read", {"query": "a"})
            await run.call("search.read", {"query": "wait"})
        return first, run.result, time.monotonic() - started

    first, result, elapsed = run_async(main)
    assert first == "moved on: True"
    assert result.stop_reason == "max_seconds"
    assert elapsed < 0.3 + 0.15


def test_a_tool_cleaning_up_after_its_deadline_finishes_in_its_own_task_within_the_grace() -> None:
    """A tool cut at the deadline that awaits its clean-up briefly finishes it within the
    grace, in the task it ran in (its cancel scopes and locks stay its own), before the run
    goes on."""
    seen: list[Any] = []

    @corral.tool(name="search.read", effect="read")
    async def tidy(query: str) -> str:
        running = asyncio.current_task()
        try:
            await asyncio.sleep(5)
        finally:
            await asyncio.sleep(0.01)
            seen.append(asyncio.current_task() is running)
        return "never"

    async def main() -> corral.RunResult:
        async with new_run(policy(budgets={"max_seconds": 0.2}), tools=[tidy]) as run:
            await run.call("search.read", {"query": "a"})
        return run.result

    result = run_async(main)
    assert result.stop_reason == "max_seconds"
    assert seen == [True]
