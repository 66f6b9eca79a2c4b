"""``AsyncRun.call`` of a plain read (and so every read of the loop) calls the chain directly
(gateway/direct_async.py) instead of driving the flow: the two must be indistinguishable.
Each scenario runs twice, once on the direct path and once with it turned off, with a sync
and with an async tool, and everything observable must match: what each call returned or
raised, the events recorded (bar timings), the usage and the result."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.gateway import direct
from corral.gateway._escapes import run_async
from corral.gateway.model_turn import model_flow
from corral.testing import (
    ManualClock,
    MemoryStore,
    ScriptedModel,
    call,
    error,
    final,
    malformed,
    prices,
    slow,
    truncated,
)
from test_direct_path import POLICY, TIMINGS, Flaky, args

queries_calls = st.lists(
    st.tuples(
        st.sampled_from(["kb.read", "kb.read", "kb.read", "kb.write", "nope"]),
        args,
        st.sampled_from([None, None, "turn-1.0", "x" * 600]),
    ),
    max_size=12,
)


class AsyncVendor:
    def __init__(self, is_async: bool) -> None:
        self.calls = 0
        self.is_async = is_async

    def answer(self, query: str, limit: int) -> Any:
        self.calls += 1
        if query.startswith("raise"):
            raise Flaky(f"vendor failed on {query}")
        if query.startswith("html"):
            return "<b>bold</b> " + query
        if query.startswith("dict"):
            return {"q": query, "n": limit}
        if query.startswith("big"):
            return "x" * 5000
        if query.startswith("secret"):
            return "token sk-live-" + "a" * 24
        return f"answer for {query} ({limit})"

    def tools(self) -> list[corral.Tool]:
        if self.is_async:

            @corral.tool(name="kb.read", effect="read", cost_usd=0.01, retries=1)
            async def kb_read(query: str, limit: int = 3) -> Any:
                await asyncio.sleep(0)
                return self.answer(query, limit)

        else:

            @corral.tool(name="kb.read", effect="read", cost_usd=0.01, retries=1)
            def kb_read(query: str, limit: int = 3) -> Any:
                return self.answer(query, limit)

        @corral.tool(name="kb.write", effect="write")
        def kb_write(text: str) -> str:
            return "written " + text

        return [kb_read, kb_write]


def scenario(
    steps: list[tuple[str, Any, str | None]], cache: bool, is_async: bool, *, directly: bool
) -> tuple[list[Any], list[Any], Any, int]:
    pol = dict(POLICY)
    tools = dict(pol["tools"])  # type: ignore[arg-type]
    tools["specs"] = {"kb.read": {"max_output_chars": 200, "cache": cache}}
    pol["tools"] = tools
    store = MemoryStore()
    vendor = AsyncVendor(is_async)
    seen: list[Any] = []

    async def main() -> corral.AsyncRun:
        run = corral.AsyncRun(
            corral.Policy.from_dict(pol),
            tools=vendor.tools(),
            store=store,
            clock=ManualClock(),
            credentials={"kb": {"token": "sk-live-" + "a" * 24}},
        )
        async with run:
            if not directly:
                run._plans.update({"kb.read": None, "kb.write": None})
            for name, arguments, call_id in steps:
                try:
                    seen.append(("ok", await run.call(name, arguments, call_id=call_id)))
                except corral.Stop as stop:
                    seen.append(("stop", stop.info.to_dict()))
                    break
                except corral.ToolRejected as rejected:
                    seen.append(("rejected", rejected.reason, rejected.message))
                except corral.ConfigError as mistake:
                    seen.append(("config", str(mistake)))
                seen.append(run.last_call)
            if directly:
                planned = run._plans.get("kb.read", "none")
                assert planned is None or planned == "none" or isinstance(planned, direct.Plan)
        return run

    run = asyncio.run(main())
    events = [
        (e.kind, {k: v for k, v in e.data.items() if k not in TIMINGS})
        for e in store.events(run.id)
    ]
    result = run.result
    return seen, events, (result.status, result.stop_reason, result.usage), vendor.calls


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=queries_calls, cache=st.booleans(), is_async=st.booleans())
def test_the_async_direct_path_and_the_flow_are_indistinguishable(
    steps: list[tuple[str, Any, str | None]], cache: bool, is_async: bool
) -> None:
    """Call by call and event by event, the direct path does what the flow does."""
    direct_run = scenario(steps, cache, is_async, directly=True)
    assert direct_run == scenario(steps, cache, is_async, directly=False)


@pytest.mark.parametrize("is_async", [False, True])
def test_the_loops_reads_take_the_direct_path(is_async: bool) -> None:
    """In corral's loop, a read (sync or async tool, with its call id) takes the direct path
    and its events carry the call id as the flow's do."""
    vendor = AsyncVendor(is_async)
    model = ScriptedModel([call("kb.read", query="a"), call("kb.write", text="t"), final("ok")])
    runs: list[corral.AsyncRun] = []
    store = MemoryStore()
    result = corral.run(
        "t",
        model=model,
        tools=vendor.tools(),
        policy=corral.Policy.from_dict(POLICY),
        store=store,
        on_run=runs.append,
    )
    assert result.stop_reason == "ok"
    assert isinstance(runs[0]._plans["kb.read"], direct.Plan)
    assert runs[0]._plans["kb.write"] is None
    calls = [e.data for e in store.events(result.run_id) if e.kind == "tool_call"]
    assert [c.get("call_id") for c in calls] == ["turn-1.0", "turn-2.0"]


# -- model turns ---------------------------------------------------------------------------
class Hostile(BaseException):
    """Not an Exception: a model raising it fails its turn (model_error)."""


TURNS = {
    "answer": [final("done")],
    "call": [call("kb.read", query="a")],
    "malformed": [malformed()],
    "raises": [error(RuntimeError("endpoint down"))],
    "hostile": [error(Hostile("boom"))],
    "truncated": [truncated()],
    "bad usage": [final("done", input_tokens=-1)],
    "priced": [final("done", input_tokens=1200, output_tokens=300)],
    "timeout": [slow(final("late"), 1.0)],
}


def turn_scenario(script: list[Any], *, directly: bool) -> tuple[Any, list[Any], Any]:
    """One model turn, taken directly (AsyncRun.model_turn) or through the flow."""
    store = MemoryStore()
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"]},
            "models": {"timeout_seconds": 0.05},
            "budgets": {"max_usd": 1},
        }
    )
    model = ScriptedModel(script, price=prices(2, 8))
    messages = [{"role": "user", "content": "vendor status?"}]

    async def main() -> tuple[Any, corral.AsyncRun]:
        run = corral.AsyncRun(pol, tools=AsyncVendor(True).tools(), store=store)
        async with run:
            try:
                if directly:
                    response = await run.model_turn(model, messages)
                else:
                    flow = model_flow(run._core, model, messages, run.tool_specs("neutral"))
                    response = await run_async(flow, approver=None, clock=run._core.clock)
                seen: Any = ("ok", response.text, [c.name for c in response.tool_calls])
            except corral.Stop as stop:
                seen = ("stop", stop.info.to_dict())
        return seen, run

    seen, run = asyncio.run(main())
    events = [(e.kind, _untimed(e.data)) for e in store.events(run.id)]
    result = run.result
    return _untimed(seen), events, (result.status, _untimed(result.usage.to_dict()))


def _untimed(value: Any) -> Any:
    """``value`` without the times in it (the turns run on the real clock)."""
    timings = TIMINGS | {"active_seconds", "waiting_seconds"}
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in timings}
    if isinstance(value, list | tuple):
        return [_untimed(v) for v in value]
    return value


@pytest.mark.parametrize("script", TURNS.values(), ids=TURNS.keys())
def test_a_model_turn_taken_directly_is_the_flows(script: list[Any]) -> None:
    """A model turn of AsyncRun (and of the loop) takes open_turn and close_turn around the
    awaited call: what it returns or raises, its events and the usage are the flow's."""
    assert turn_scenario(script, directly=True) == turn_scenario(script, directly=False)
