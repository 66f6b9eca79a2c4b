"""``authorize`` of a plain read takes the chain directly (``gateway/direct.py``) instead of
the flow, and its report ends the attempt there: the two must be indistinguishable. Each
scenario runs twice, once on the direct path and once with it turned off, sync and async,
and everything observable must match: what each authorize and report returned or raised,
the tickets (arguments, context, timeout), the events recorded (bar timings), the usage, the
result and what the tool saw."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.gateway import direct
from corral.stores.base import KillSwitchState
from corral.testing import ManualClock, MemoryStore

TIMINGS = {"seconds", "at", "retry_after", "recording"}
SECRET = "sk-live-" + "a" * 24

POLICY: dict[str, Any] = {
    "tools": {
        "allow": ["kb.read", "kb.write", "doc.read"],
        "max_invalid_args": 3,
        "specs": {
            "kb.read": {"max_output_chars": 200},
            # described by the policy alone: executed by the caller, with a context
            "doc.read": {
                "effect": "read",
                "args_schema": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                    "additionalProperties": False,
                },
            },
        },
    },
    "budgets": {"max_tool_calls": 9, "max_usd": 0.06, "max_steps": 50},
    "writes": {"require_approval": False},
    "loops": {"repeats": 3, "window": 5},
    "degrade": {"min_calls": 3, "failure_rate": 0.5, "window_seconds": 60},
}


def output_of(query: Any) -> Any:
    """What the caller's tool returns for ``query``, or raises."""
    text = str(query)
    if text.startswith("raise"):
        raise RuntimeError(f"vendor failed on {text} {SECRET}")
    if text.startswith("html"):
        return "<b>bold</b> " + text
    if text.startswith("dict"):
        return {"q": text, "nested": [1, {"deep": text}]}
    if text.startswith("big"):
        return "x" * 5000
    if text.startswith("secret"):
        return "token " + SECRET
    if text.startswith("nul"):
        return "a\0b"
    return f"answer for {text}"


@corral.tool(name="kb.read", effect="read", cost_usd=0.01)
def kb_read(query: str, limit: int = 3) -> Any:
    return output_of(query)


@corral.tool(name="kb.write", effect="write")
def kb_write(text: str) -> str:
    return "written " + text


queries = st.sampled_from(["a", "b", "raise 1", "html", "dict", "big", "secret", "nul", "a"])
args = st.one_of(
    st.fixed_dictionaries({"query": queries}),
    st.fixed_dictionaries({"q": queries}),
    st.fixed_dictionaries({"query": queries, "limit": st.integers(-2, 5)}),
    st.sampled_from([{}, {"query": 7}, {"q": "a", "extra": 1}, '{"query": "json"}', "[1]"]),
    st.just(None),
)
names = st.sampled_from(["kb.read", "kb.read", "doc.read", "doc.read", "kb.write", "nope"])
call_ids = st.one_of(st.none(), st.sampled_from(["c1", "c2", f"id {SECRET}"]))
attributes = st.one_of(st.none(), st.just({"mcp.server": "kb"}), st.just({"x.y": SECRET}))
#: how the caller ends an authorized call: report what the tool returned (or raised), or
#: report a timeout, or never report it
endings = st.sampled_from(["report", "report", "report", "timeout", "abandon"])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("call"), st.tuples(names, args, call_ids, attributes, endings)),
        st.tuples(st.just("switch"), st.sampled_from(["stop_all", "disable_writes"])),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=12,
)
VARIANTS: dict[str, dict[str, Any]] = {
    "enforce": {},
    "observe": {"mode": "observe"},
    "tell model": {
        "loops": {"repeats": 2, "window": 4, "on_detected": "tell_model"},
        "degrade": {"min_calls": 2, "failure_rate": 0.5, "on_degraded": "tell_model"},
    },
}


def _ticket(ticket: corral.Ticket) -> Any:
    ctx = ticket.context
    seen = None if ctx is None else (ctx.tool, ctx.attempt, ctx.idempotency_key)
    return (ticket.replayed, ticket.tool, dict(ticket.arguments), ticket.timeout, seen)


async def _maybe(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _step(run: Any, step: tuple[Any, ...], seen: list[Any]) -> bool:
    """One authorize (and its report); False once the run has stopped."""
    name, arguments, call_id, attrs, ending = step
    try:
        ticket = await _maybe(run.authorize(name, arguments, call_id=call_id, attributes=attrs))
        seen.append(("ticket", _ticket(ticket)))
        if ticket.replayed:
            seen.append(("replayed", ticket.output))
            return True
        if ending == "abandon":
            return True
        if ending == "timeout":
            outcome = await _maybe(run.report_failure(ticket, TimeoutError("slow"), timed_out=True))
        else:
            query = dict(ticket.arguments).get("query", dict(ticket.arguments).get("q"))
            try:
                output = output_of(query)
            except RuntimeError as exc:
                outcome = await _maybe(run.report_failure(ticket, exc))
            else:
                outcome = await _maybe(run.report(ticket, output))
        seen.append(("ok", outcome))
    except corral.Stop as stop:
        seen.append(("stop", stop.info.to_dict()))
        return False
    except corral.ToolRejected as rejected:
        seen.append(("rejected", rejected.reason, rejected.message, rejected.tool))
    seen.append(run.last_call)
    return True


def scenario(plan: list[tuple[str, Any]], variant: str, *, directly: bool, is_async: bool) -> Any:
    pol = {**POLICY, **VARIANTS[variant]}
    store = MemoryStore()
    seen: list[Any] = []
    kind = corral.AsyncRun if is_async else corral.Run
    run = kind(
        corral.Policy.from_dict(pol),
        tools=[kb_read, kb_write],
        store=store,
        clock=ManualClock(),
        credentials={"kb": {"token": SECRET}},
    )
    if not directly:
        run._core.external_plans.update({"kb.read": None, "doc.read": None, "kb.write": None})

    async def steps_of() -> None:
        for what, detail in plan:
            if what == "switch":
                store.set_kill_switch(KillSwitchState(scope="global", mode=detail))
            elif what == "clear":
                store.clear_kill_switch("global")
            elif not await _step(run, detail, seen):
                break

    async def body() -> None:
        if is_async:
            async with run:
                await steps_of()
        else:
            with run:
                await steps_of()

    asyncio.run(body())
    if directly:
        for planned in run._core.external_plans.values():
            assert planned is None or isinstance(planned, direct.Plan)
    events = [
        (e.kind, {k: v for k, v in e.data.items() if k not in TIMINGS})
        for e in store.events(run.id)
    ]
    result = run.result
    return seen, events, (result.status, result.stop_reason, result.usage)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps, variant=st.sampled_from(sorted(VARIANTS)))
def test_authorize_directly_and_through_the_flow_are_indistinguishable(
    plan: list[tuple[str, Any]], variant: str, is_async: bool
) -> None:
    got = scenario(plan, variant, directly=True, is_async=is_async)
    assert got == scenario(plan, variant, directly=False, is_async=is_async)


def test_a_plain_read_is_authorized_directly_and_the_rest_through_the_flow() -> None:
    with corral.Run(corral.Policy.from_dict(POLICY), tools=[kb_read, kb_write],
                    store="memory://") as run:  # fmt: skip
        ticket = run.authorize("doc.read", {"q": "a"}, call_id="c1")
        assert ticket.context is not None and ticket.context.tool == "doc.read"
        assert run.report(ticket, "<i>up</i>") == "up"
        run.report(run.authorize("kb.read", {"query": "a"}), "fine")
        run.report(run.authorize("kb.write", {"text": "t"}), "written")
        plans = run._core.external_plans
        assert isinstance(plans["doc.read"], direct.Plan)
        assert isinstance(plans["kb.read"], direct.Plan)
        assert plans["kb.write"] is None  # a write: the flow (claims, approvals)
        keyed = run.authorize("kb.read", {"query": "b"}, idempotency_key="k")  # the flow
        assert run.report(keyed, "keyed") == "keyed"
        with pytest.raises(corral.ConfigError, match="already reported"):
            run.report(ticket, "again")
    assert run.result.usage.tool_calls == 4


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_authorize_and_report_from_threads_count_each_call_once(store: str, tmp_path: Any) -> None:
    """Threads authorizing and reporting reads of one run at once (some reports abandoned,
    some failures): the cap on tool calls is never passed, each authorized call is counted
    once, and no hold outlives the run."""
    url = store if store == "memory://" else f"sqlite:///{tmp_path / 'corral.db'}"
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["doc.read"], "specs": {"doc.read": {
                "effect": "read", "cache": False, "cost_usd": 0.001,
                "args_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}}},
            "budgets": {"max_tool_calls": 300, "max_usd": 10, "max_steps": 10},
            "loops": {"repeats": 5, "window": 5},
        }
    )  # fmt: skip
    errors: list[BaseException] = []
    authorized: list[int] = []
    with corral.Run(pol, store=url) as run:

        def work(n: int) -> None:
            for i in range(120):
                try:
                    ticket = run.authorize("doc.read", {"q": f"{n}-{i}"}, call_id=f"{n}.{i}")
                    authorized.append(1)
                    if i % 7 == 3:
                        continue  # never reported: settled as the run ends
                    run.report(ticket, f"answer {n}-{i}")
                except corral.Stop:
                    return
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert isinstance(run._core.external_plans["doc.read"], direct.Plan)
    assert errors == []
    result = run.result
    assert result.stop_reason == "max_tool_calls"
    assert len(authorized) == result.usage.tool_calls == 300
    assert run._core.budget.meter.held().tool_calls == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_ticket_never_reported_counts_at_what_it_held_in_the_run_and_its_windows(
    is_async: bool,
) -> None:
    """A read (direct path) and a write (the flow) authorized and never reported: at the
    run's end both count at what they held, in the run's usage as in the tenant's window (the
    caller had the tickets: the actions may have happened); a report after the end is
    refused."""
    pol = corral.Policy.from_dict(
        {**POLICY, "limits": [{"per": "tenant", "window": "1d", "max_usd": 10}]}
    )
    store = MemoryStore()
    kind = corral.AsyncRun if is_async else corral.Run
    run = kind(pol, tools=[kb_read, kb_write], store=store, tenant="acme")

    async def body() -> None:
        tickets = [
            await _maybe(run.authorize("kb.read", {"query": "a"})),
            await _maybe(run.authorize("kb.write", {"text": "t"})),
        ]
        await _maybe(run.finish("done"))
        with pytest.raises(corral.ConfigError, match="the run has ended"):
            await _maybe(run.report(tickets[0], "late"))

    asyncio.run(body())
    assert isinstance(run._core.external_plans["kb.read"], direct.Plan)
    result = run.result
    assert result.usage.tool_calls == 2
    assert result.usage.usd == Decimal("0.01")  # kb.read's declared cost; kb.write none
    stored = store.get_run(result.run_id)
    assert stored is not None and stored.usage["tool_calls"] == 2
    scope = windows.scoped(pol, Charge(usd=Decimal(1)), tenant="acme", agent=None, now=time.time())[
        0
    ].scope
    assert store.scope_usage(scope) == (2, Decimal("0.01"))
