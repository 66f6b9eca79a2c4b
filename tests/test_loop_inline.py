"""``corral.run`` calls a sync tool inline on its own event loop (``drivers.execute_loop``),
as ``Run.call`` does, where ``corral.arun`` hands it to a worker thread: the two must be
indistinguishable but for where the tool ran, and the inline call stays bounded by the
run's deadline, the kill switch and Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.controls import killswitch
from corral.testing import ManualClock, MemoryStore, ScriptedModel, Turn, call, final, turn

# The recording's digest covers its timings too.
TIMINGS = {"seconds", "at", "retry_after", "recording"}


class Flaky(Exception):
    pass


class Vendor:
    """Sync tools that note the thread they ran in."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: set[bool] = set()  # ran on the main thread?

    def _ran(self, what: str) -> None:
        self.calls.append(what)
        self.threads.add(threading.current_thread() is threading.main_thread())

    def tools(self) -> list[corral.Tool]:
        @corral.tool(name="kb.read", effect="read", retries=1)
        def kb_read(query: str) -> Any:
            self._ran("read " + query)
            if query.startswith("raise"):
                raise Flaky(f"vendor failed on {query}")
            if query == "html":
                return "<b>bold</b> text"
            if query == "loop":  # an event loop of its own, as in a worker thread
                return asyncio.run(asyncio.sleep(0, result="from a loop of its own"))
            if query == "dict":
                return {"q": query}
            return f"answer for {query}"

        @corral.tool(name="kb.write", effect="write")
        def kb_write(text: str) -> str:
            self._ran("write " + text)
            return "written " + text

        @corral.tool(name="kb.ctx", effect="read")
        def kb_ctx(query: str, ctx: corral.ToolContext) -> str:
            self._ran("ctx " + query)
            return f"{query} for {ctx.tenant} ({ctx.attempt})"

        return [kb_read, kb_write, kb_ctx]


POLICY = {
    "tools": {
        "allow": ["kb.read", "kb.write", "kb.ctx"],
        "max_invalid_args": 2,
        "specs": {"kb.read": {"cache": False}},
    },
    "budgets": {"max_tool_calls": 8, "max_steps": 12},
    "writes": {"require_approval": True},
    "loops": {"repeats": 3, "window": 5},
}


def approver(request: Any) -> bool:
    return "no" not in str(request.arguments)


def run_either(inline: bool, **options: Any) -> corral.RunResult:
    """``corral.run`` (sync tools inline) or ``corral.arun`` (sync tools in a thread)."""
    if inline:
        return corral.run("the task", **options)
    return asyncio.run(corral.arun("the task", **options))


def governed(script: list[Turn], *, inline: bool) -> tuple[Any, ...]:
    """One run of ``script``: with ``corral.run`` (sync tools inline) or ``corral.arun``
    (sync tools in a worker thread); everything observable, and where the tools ran."""
    store, vendor = MemoryStore(), Vendor()
    model = ScriptedModel(script)
    options: dict[str, Any] = {
        "model": model,
        "tools": vendor.tools(),
        "policy": corral.Policy.from_dict(POLICY),
        "store": store,
        "tenant": "acme",
        "run_id": "run-1",
        "clock": ManualClock(),
        "approver": approver,
    }
    result = run_either(inline, **options)
    events = [
        (e.kind, {k: v for k, v in e.data.items() if k not in TIMINGS})
        for e in store.events(result.run_id)
    ]
    seen = [list(r.messages) for r in model.requests]
    outcome = (result.status, result.stop_reason, result.answer, result.usage, result.stop)
    return (outcome, events, seen, vendor.calls), vendor.threads


queries = st.sampled_from(["a", "b", "raise 1", "html", "loop", "dict", "no"])
one_call = st.one_of(
    st.builds(lambda q: call("kb.read", query=q), queries),
    st.builds(lambda q: call("kb.write", text=q), queries),
    st.builds(lambda q: call("kb.ctx", query=q), queries),
    st.just(call("kb.read", query=7)),  # invalid arguments: handed back to the model
    st.just(call("nope", query="a")),  # an unknown tool
)
turns = st.lists(
    st.one_of(one_call, st.lists(one_call, min_size=2, max_size=3).map(lambda c: turn(*c))),
    max_size=8,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=turns)
def test_a_sync_tool_inline_and_in_a_thread_are_indistinguishable(script: list[Turn]) -> None:
    """Same script, same events, usage, stop, messages and tool calls, inline or threaded."""
    script = [*script, final("done")]
    inline, main_only = governed(script, inline=True)
    threaded, never_main = governed(script, inline=False)
    assert inline == threaded
    assert main_only <= {True} and never_main <= {False}  # each path was the one meant


def slow_tool(started: threading.Event, interrupted: threading.Event) -> corral.Tool:
    def fetch(q: str = "") -> str:
        started.set()
        try:
            time.sleep(20)
        except BaseException:
            interrupted.set()
            raise
        return "late"

    return corral.tool(fetch, name="vendor.fetch", effect="read", timeout=60)


def test_an_inline_sync_tool_is_cut_at_the_runs_deadline_as_in_a_thread() -> None:
    """A sync tool sleeping past max_seconds: interrupted inline at the run's deadline
    (abandoned in a thread under arun), the run stopped max_seconds either way."""
    pol = corral.Policy.from_dict(
        {"tools": {"allow": ["vendor.fetch"]}, "budgets": {"max_seconds": 0.4}}
    )
    stops = []
    for inline in (True, False):
        started, interrupted = threading.Event(), threading.Event()
        options: dict[str, Any] = {
            "model": ScriptedModel([call("vendor.fetch", q="x"), final("done")]),
            "tools": [slow_tool(started, interrupted)],
            "policy": pol,
            "store": MemoryStore(),
        }
        began = time.monotonic()
        result = run_either(inline, **options)
        took = time.monotonic() - began
        assert started.is_set() and took < 0.4 + 0.3, took
        assert interrupted.is_set() is inline  # inline: the signal raised inside it
        stops.append((result.stop_reason, result.usage.tool_calls))
    assert stops == [("max_seconds", 1), ("max_seconds", 1)]


def test_an_inline_sync_tool_past_its_own_timeout_fails_as_in_a_thread() -> None:
    """A tool timeout shorter than the run's time: interrupted inline (abandoned in a thread),
    the same failed attempt, events and stop either way."""
    seen = []
    for inline in (True, False):
        started, interrupted = threading.Event(), threading.Event()
        fetch = slow_tool(started, interrupted).fn
        slow = corral.tool(fetch, name="vendor.fetch", effect="read", timeout=0.2)
        store = MemoryStore()
        result = run_either(
            inline,
            model=ScriptedModel([call("vendor.fetch", q="x"), final("done")]),
            tools=[slow],
            policy=corral.Policy.from_dict({"tools": {"allow": ["vendor.fetch"]}}),
            store=store,
            run_id="run-1",
        )
        assert interrupted.is_set() is inline
        events = []
        for e in store.events(result.run_id):
            data = {k: v for k, v in e.data.items() if k not in TIMINGS}
            if "usage" in data:  # on the real clock: seconds differ
                data["usage"] = {k: v for k, v in data["usage"].items() if "seconds" not in k}
            events.append((e.kind, data))
        seen.append((result.stop_reason, result.usage.tool_calls, events))
    assert seen[0] == seen[1]
    assert seen[0][0] == "tool_error"


def test_an_inline_sync_tool_is_interrupted_by_a_stop_all_switch_within_1_s() -> None:
    """A stop_all switch set while the tool runs inline raises inside it (the watcher
    signals the main thread): the run stops kill_switch, the call cancelled in flight."""
    store = MemoryStore()
    started, interrupted = threading.Event(), threading.Event()
    switched: list[float] = []

    def flip() -> None:
        assert started.wait(10)
        time.sleep(0.05)
        switched.append(time.monotonic())
        killswitch.enable(store, mode="stop_all", actor="ops")

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    result = corral.run(
        "t",
        model=ScriptedModel([call("vendor.fetch", q="x"), final("done")]),
        tools=[slow_tool(started, interrupted)],
        policy=corral.Policy.from_dict({"tools": {"allow": ["vendor.fetch"]}}),
        store=store,
    )
    ended = time.monotonic()
    thread.join(5)
    assert str(result.stop) == "kill_switch:vendor.fetch"
    assert result.stop is not None and result.stop.extra["cancelled_in_flight"] is True
    assert interrupted.is_set()  # stopped inside, not abandoned
    assert ended - switched[0] <= 1.0
    calls = [e.data["outcome"] for e in store.events(result.run_id) if e.kind == "tool_call"]
    assert calls == ["cancelled"]


def test_ctrl_c_interrupts_an_inline_sync_tool_at_once() -> None:
    """Ctrl-C while a sync tool holds corral.run's loop raises inside the tool at once; the
    run ends cancelled and KeyboardInterrupt reaches the caller, as asyncio.run does."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by someone else here")
    started, interrupted = threading.Event(), threading.Event()
    runs: list[corral.AsyncRun] = []

    def interrupt() -> None:
        assert started.wait(10)
        time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        corral.run(
            "t",
            model=ScriptedModel([call("vendor.fetch", q="x"), final("done")]),
            tools=[slow_tool(started, interrupted)],
            policy=corral.Policy.from_dict({"tools": {"allow": ["vendor.fetch"]}}),
            store=MemoryStore(),
            on_run=runs.append,
        )
    thread.join(5)
    assert interrupted.is_set() and time.monotonic() - began < 5
    assert runs[0].result.stop_reason == "cancelled"


def where_it_runs(**options: Any) -> list[bool]:
    """Whether each call of a sync tool in a corral.run ran on the main thread."""
    where: list[bool] = []

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        where.append(threading.current_thread() is threading.main_thread())
        return "ok"

    result = corral.run(
        "t",
        model=ScriptedModel([call("kb.read", query="a"), final("done")]),
        tools=[kb_read],
        policy=corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}}),
        store=MemoryStore(),
        **options,
    )
    assert result.stop_reason == "ok"
    return where


def test_a_sync_tool_runs_in_a_thread_when_another_task_waits_for_the_loop() -> None:
    """Inline only when the run's task is alone on the loop: a task of the caller's (here
    started from on_run) keeps the sync tool in a worker thread, so that task runs on."""
    ticks: list[float] = []

    async def ticking() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.001)

    def start(run: corral.AsyncRun) -> None:
        asyncio.get_running_loop().create_task(ticking())

    assert where_it_runs() == [True]
    assert where_it_runs(on_run=start) == [False]
    assert ticks


def test_a_sync_tool_runs_in_a_thread_when_corral_run_is_called_off_the_main_thread() -> None:
    """Off the main thread the timer signal cannot bound a call: a worker thread does."""
    out: list[list[bool]] = []
    thread = threading.Thread(target=lambda: out.append(where_it_runs()))
    thread.start()
    thread.join(30)
    assert out == [[False]]
