"""``max_seconds`` is overshot by at most ~100 ms, on every path (DESIGN.md, invariant 2).

Each test runs one path under a small ``max_seconds`` with something in it that takes
seconds when unbounded (a sleeping tool or model, a huge output, a store that does not
answer), and asserts the wall time of the whole call (``corral.run``, ``corral.arun``, the
``Run`` block) and its stop reason. ``pytest tests/test_deadlines.py -s`` prints the
overshoot measured on each path.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import corral
import corral.controls.approvals
from corral.clock import DEADLINE
from corral.controls import killswitch
from corral.exceptions import StoreError
from corral.gateway.guards import approval_queue
from corral.models.base import ModelResponse
from corral.stores.base import RunRecord
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final, slow
from crash import pg as crash_pg

T = TypeVar("T")

#: Room for a loaded CI machine; the target is 100 ms. Every path below takes seconds
#: when unbounded, so a bound that does not hold fails the test.
SLACK = 0.15
OVERSHOOT: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def overshoot_table() -> Iterator[None]:
    """Print the worst overshoot measured per path (visible with ``-s``)."""
    yield
    if OVERSHOOT:
        width = max(len(name) for name in OVERSHOOT)
        print(f"\n{'path':<{width}}  overshoot of max_seconds")
        for name, over in sorted(OVERSHOOT.items(), key=lambda kv: -kv[1]):
            print(f"{name:<{width}}  {over * 1000:7.1f} ms")


def bounded(name: str, max_seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, asserting that it took at most ``max_seconds`` + SLACK of wall time."""
    started = time.monotonic()
    out = fn()
    elapsed = time.monotonic() - started
    OVERSHOOT[name] = max(OVERSHOOT.get(name, float("-inf")), elapsed - max_seconds)
    assert elapsed <= max_seconds + SLACK, (
        f"{name}: {elapsed:.3f} s under max_seconds {max_seconds} (slack {SLACK})"
    )
    return out


def policy(max_seconds: float, *allow: str, **sections: Any) -> corral.Policy:
    data: dict[str, Any] = {
        "tools": {"allow": list(allow)},
        "budgets": {"max_seconds": max_seconds},
        "writes": {"require_approval": False},
    }
    data.update(sections)
    return corral.Policy.from_dict(data)


def in_thread(fn: Callable[[], T]) -> T:
    """``fn()`` run in a thread that is not the main one (no timer signal there)."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[no-any-return]


def with_run(pol: corral.Policy, body: Callable[[corral.Run], Any], **kw: Any) -> Any:
    """The result of a ``with Run(...)`` block running ``body``."""
    kw.setdefault("store", MemoryStore())
    with corral.Run(pol, **kw) as run:
        body(run)
    return run.result


async def with_async_run(
    pol: corral.Policy, body: Callable[[corral.AsyncRun], Any], **kw: Any
) -> Any:
    kw.setdefault("store", MemoryStore())
    async with corral.AsyncRun(pol, **kw) as run:
        await body(run)
    return run.result


def forever(run: corral.Run, name: str) -> None:
    """Call ``name`` with fresh arguments until the run stops."""
    for i in range(10**6):
        run.call(name, {"q": str(i)})


# -- tools ------------------------------------------------------------------------------
@corral.tool(name="sleep.read", effect="read")
def sleep_read(q: str = "") -> str:
    """Sleeps 5 s (a sync call)."""
    time.sleep(5)
    return "late"


@corral.tool(name="asleep.read", effect="read")
async def asleep_read(q: str = "") -> str:
    """Sleeps 5 s (an async call)."""
    await asyncio.sleep(5)
    return "late"


@corral.tool(name="stubborn.read", effect="read")
async def stubborn_read(q: str = "") -> str:
    """Swallows its first cancellation and sleeps 2 s more."""
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        await asyncio.sleep(2)
    return "late"


@corral.tool(name="mule.read", effect="read")
async def mule_read(q: str = "") -> str:
    """Swallows every cancellation, forever."""
    while True:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)


@corral.tool(name="quick.read", effect="read")
def quick_read(q: str = "") -> str:
    """Answers at once."""
    return f"result {q}"


PAGE = (
    "<html><head><script>" + "var x = 1;\n" * 2000 + "</script></head><body>"
    + "<div><p>hello <b>world</b> &amp; more text</p></div>\n" * 30000
    + "</body></html>"
)  # fmt: skip
# Markup with next to no text: a parser has to go through all it may read.
BARE_PAGE = (
    "<html><body>" + '<div class="row"><span></span><i></i></div>\n' * 40000 + "x</body></html>"
)
BIG_LIST = [[1, 2, 3]] * 1_000_000  # ~0.5 s of json.dumps, 8 MB


@corral.tool(name="page.read", effect="read")
def page_read(ctx: corral.ToolContext, q: str = "") -> str:
    """Returns a 1.9 MB page of bare markup 5 ms before the run's deadline."""
    time.sleep(max(0.0, ctx.remaining() - 0.005))
    return BARE_PAGE


@corral.tool(name="rows.read", effect="read")
def rows_read(ctx: corral.ToolContext, q: str = "") -> Any:
    """Returns a million-item list just before the run's deadline."""
    time.sleep(max(0.0, ctx.remaining() - 0.02))
    return BIG_LIST


# -- models -----------------------------------------------------------------------------
class SleepyModel:
    """A model whose plain ``respond`` sleeps ``seconds``."""

    name = "sleepy"

    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds

    def respond(self, request: Any) -> ModelResponse:
        time.sleep(self.seconds)
        return ModelResponse(text="late")


class StubbornModel:
    """An async model that swallows its cancellation and goes on for 2 s."""

    name = "stubborn"

    async def respond(self, request: Any) -> ModelResponse:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(2)
        return ModelResponse(text="late")


# -- tools: every way a tool runs ------------------------------------------------------
def test_sync_tool_on_the_main_thread_stops_at_max_seconds() -> None:
    """A sync tool called from the main thread is interrupted by the timer at the deadline."""
    pol = policy(0.4, "sleep.read")
    result = bounded(
        "sync tool, main thread",
        0.4,
        lambda: with_run(pol, lambda r: r.call("sleep.read"), tools=[sleep_read]),
    )
    assert result.stop_reason == "max_seconds"


def test_sync_tool_off_the_main_thread_is_abandoned_at_max_seconds() -> None:
    """A sync tool called from another thread is abandoned in its worker at the deadline."""
    pol = policy(0.4, "sleep.read")
    result = in_thread(
        lambda: bounded(
            "sync tool, worker thread",
            0.4,
            lambda: with_run(pol, lambda r: r.call("sleep.read"), tools=[sleep_read]),
        )
    )
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        (sleep_read, "sync tool, AsyncRun"),
        (asleep_read, "async tool, AsyncRun"),
        (stubborn_read, "async tool swallowing cancellation, AsyncRun"),
    ],
)
def test_every_tool_under_async_run_stops_at_max_seconds(tool: corral.Tool, path: str) -> None:
    """Under AsyncRun a sync tool is abandoned, an async one cancelled, and one that
    ignores its cancellation abandoned after a short grace."""
    pol = policy(0.4, tool.name)

    async def main() -> Any:
        return await with_async_run(pol, lambda r: r.call(tool.name), tools=[tool])

    result = bounded(path, 0.4, lambda: asyncio.run(main()))
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        (sleep_read, "sync tool, corral.run"),
        (asleep_read, "async tool, corral.run"),
        (stubborn_read, "async tool swallowing cancellation, corral.run"),
        (mule_read, "async tool swallowing every cancellation, corral.run"),
    ],
)
def test_every_tool_under_corral_run_stops_at_max_seconds(tool: corral.Tool, path: str) -> None:
    """corral.run returns by the deadline, and its event loop does not wait at the end
    for a tool that ignores its cancellation."""
    model = ScriptedModel([call(tool.name, q="x"), final("done")])
    pol = policy(0.4, tool.name)
    result = bounded(
        path, 0.4, lambda: corral.run("t", model=model, tools=[tool], policy=pol, store="memory://")
    )
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize("tool", [asleep_read, stubborn_read])
def test_async_tools_from_sync_run_stop_at_max_seconds(tool: corral.Tool) -> None:
    """An async tool called from the sync Run (in a worker with its own loop) stops in time."""
    pol = policy(0.4, tool.name)
    result = bounded(
        f"{tool.name} from Run",
        0.4,
        lambda: with_run(pol, lambda r: r.call(tool.name), tools=[tool]),
    )
    assert result.stop_reason == "max_seconds"


def test_retries_with_backoff_stop_at_max_seconds() -> None:
    """Retries (and their backoff) of a failing read end at the run's deadline."""

    @corral.tool(name="flaky.read", effect="read", retries=10)
    def flaky(q: str = "") -> str:
        time.sleep(0.15)
        raise ConnectionError("vendor down")

    pol = policy(0.5, "flaky.read", degrade={"retry_budget_floor": 10})
    result = bounded(
        "retries with backoff",
        0.5,
        lambda: with_run(pol, lambda r: r.call("flaky.read"), tools=[flaky]),
    )
    assert result.stop_reason == "max_seconds"
    assert result.usage.tool_calls >= 2  # it did retry


def test_read_cache_hits_stop_at_max_seconds() -> None:
    """Calls served from the read cache still stop the run at its deadline."""
    pol = policy(0.3, "quick.read", loops={"repeats": 1000, "window": 1000})

    def body(run: corral.Run) -> None:
        while True:
            run.call("quick.read", {"q": "same"})
            time.sleep(0.01)  # the caller's own work between calls

    result = bounded("read cache", 0.3, lambda: with_run(pol, body, tools=[quick_read]))
    assert result.stop_reason == "max_seconds"
    assert result.usage.tool_calls == 1  # every later call was a cache hit


# -- models ------------------------------------------------------------------------------
def test_a_sync_model_sleeping_4_s_under_max_seconds_1_stops_in_time() -> None:
    """The issue's example: respond() sleeping 4 s under max_seconds 1 ended ok after 4 s."""
    result = bounded(
        "sync model, corral.run (issue example)",
        1.0,
        lambda: corral.run("t", model=SleepyModel(4), policy=policy(1), store="memory://"),
    )
    assert result.stop_reason == "max_seconds"
    assert result.status == "stopped"


def test_a_sync_model_off_the_main_thread_is_abandoned_at_max_seconds() -> None:
    """corral.run from another thread: the sync model runs in a worker, abandoned in time."""
    result = in_thread(
        lambda: bounded(
            "sync model, corral.run off the main thread",
            0.4,
            lambda: corral.run("t", model=SleepyModel(), policy=policy(0.4), store="memory://"),
        )
    )
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_run_model_turn_with_a_sync_model_stops_at_max_seconds(where: str) -> None:
    """Run.model_turn bounds a sync model on the main thread (timer) and elsewhere (worker)."""

    def go() -> Any:
        return with_run(
            policy(0.4), lambda r: r.model_turn(SleepyModel(), [{"role": "user", "content": "hi"}])
        )

    name = f"sync model, Run.model_turn, {where}"
    result = (
        bounded(name, 0.4, go)
        if where == "main thread"
        else in_thread(lambda: bounded(name, 0.4, go))
    )
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (SleepyModel(), "sync model, AsyncRun.model_turn"),
        (ScriptedModel([slow(final("late"), 5)]), "async model, AsyncRun.model_turn"),
        (StubbornModel(), "async model swallowing cancellation, AsyncRun.model_turn"),
    ],
)
def test_async_run_model_turn_stops_at_max_seconds(model: Any, path: str) -> None:
    """AsyncRun.model_turn bounds sync, async and cancellation-swallowing models."""

    async def main() -> Any:
        return await with_async_run(
            policy(0.4), lambda r: r.model_turn(model, [{"role": "user", "content": "hi"}])
        )

    result = bounded(path, 0.4, lambda: asyncio.run(main()))
    assert result.stop_reason == "max_seconds"


@pytest.mark.parametrize(
    ("model", "path"),
    [
        (ScriptedModel([slow(final("late"), 5)]), "async model, corral.run"),
        (StubbornModel(), "async model swallowing cancellation, corral.run"),
        (StubbornModel(), "async model swallowing cancellation, Run.model_turn"),
    ],
)
def test_async_models_stop_at_max_seconds(model: Any, path: str) -> None:
    """An async model is cancelled at the deadline; one ignoring it is abandoned in time."""

    def go() -> Any:
        if "Run.model_turn" in path:
            turn = [{"role": "user", "content": "hi"}]
            return with_run(policy(0.4), lambda r: r.model_turn(model, turn))
        return corral.run("t", model=model, policy=policy(0.4), store="memory://")

    assert bounded(path, 0.4, go).stop_reason == "max_seconds"


def test_a_model_timeout_with_time_left_is_a_model_error_in_time() -> None:
    """models.timeout_seconds below the time left: model_error at that timeout, not later."""
    pol = policy(5, models={"timeout_seconds": 0.3})
    result = bounded(
        "sync model, models.timeout_seconds",
        0.3,
        lambda: corral.run("t", model=SleepyModel(), policy=pol, store="memory://"),
    )
    assert result.stop_reason == "model_error"
    assert "TimeoutError" in (result.stop.message if result.stop else "")


def test_model_call_of_the_callers_own_stops_at_max_seconds() -> None:
    """A ModelCall of the caller's own: once the run's time is up the next one is refused."""

    def body(run: corral.Run) -> None:
        while True:
            with run.model_call(model="own", input_tokens=10, max_tokens=10) as mc:
                time.sleep(0.1)  # the caller's own request
                mc.settle(input_tokens=10, output_tokens=5)

    result = bounded("ModelCall", 0.3, lambda: with_run(policy(0.3), body))
    assert result.stop_reason == "max_seconds"


# -- kill switch: a sync model call in flight ---------------------------------------------
@pytest.mark.parametrize("where", ["main thread", "worker thread"])
def test_stop_all_reaches_a_sync_model_call_in_flight(where: str) -> None:
    """A stop_all switch set while a sync model runs (5 s) stops the run within a watch
    period or two of the switch (the contract: within 1 s)."""
    store = MemoryStore()
    set_at: list[float] = []

    def switch() -> None:
        killswitch.enable(store, mode="stop_all")
        set_at.append(time.monotonic())

    def go() -> Any:
        threading.Timer(0.2, switch).start()
        return corral.run("t", model=SleepyModel(), policy=policy(30), store=store)

    result = go() if where == "main thread" else in_thread(go)
    latency = time.monotonic() - set_at[0]
    OVERSHOOT[f"stop_all, sync model in flight, {where} (after the switch)"] = latency
    assert result.stop_reason == "kill_switch"
    assert latency < 0.5


# -- output hygiene ---------------------------------------------------------------------
@pytest.mark.parametrize("tool", [page_read, rows_read], ids=["html", "json"])
def test_a_huge_output_at_the_deadline_stops_the_run_in_time(tool: corral.Tool) -> None:
    """A 1.9 MB page or a million-item list returned just before the deadline: hygiene
    ends at the deadline and the loop stops with max_seconds."""
    model = ScriptedModel([call(tool.name, q="x"), final("done")])
    pol = policy(0.5, tool.name)
    result = bounded(
        f"huge {tool.name} output, corral.run",
        0.5,
        lambda: corral.run("t", model=model, tools=[tool], policy=pol, store="memory://"),
    )
    # The page is cut at the deadline; the list (no output schema) is cut as JSON text,
    # measured and written only as far as the cap needs (never serialised whole), in
    # milliseconds: the run then ends before the deadline, or at it on a busy machine.
    assert result.stop_reason in (("max_seconds",) if tool is page_read else ("ok", "max_seconds"))


def test_a_huge_page_under_max_seconds_1_is_reduced_in_time() -> None:
    """The issue's example: a 1.4 MB HTML output under max_seconds 1 took 2.8 s."""

    @corral.tool(name="big.read", effect="read")
    def big(q: str = "") -> str:
        return PAGE[:1_400_000]

    model = ScriptedModel([call("big.read", q="x"), final("done")])
    result = bounded(
        "huge html output, corral.run (issue example)",
        1.0,
        lambda: corral.run(
            "t", model=model, tools=[big], policy=policy(1, "big.read"), store="memory://"
        ),
    )
    assert result.stop_reason == "ok"


def test_a_huge_output_reported_for_an_authorized_call_is_cleaned_in_time() -> None:
    """authorize → the caller runs until the ticket's timeout → report a huge page: the
    report is bounded, and the run stops with max_seconds right after."""

    def body(run: corral.Run) -> None:
        ticket = run.authorize("page.read", {"q": "x"})
        time.sleep(max(0.0, ticket.timeout - 0.005))  # the caller's own execution
        run.report(ticket, BARE_PAGE)
        run.step()

    result = bounded(
        "Run.authorize/report, huge page",
        0.4,
        lambda: with_run(policy(0.4, "page.read"), body, tools=[page_read]),
    )
    assert result.stop_reason == "max_seconds"


def test_a_timeout_reported_for_an_authorized_call_stops_with_max_seconds() -> None:
    """The caller runs its tool for ticket.timeout and reports the timeout: max_seconds."""

    def body(run: corral.Run) -> None:
        ticket = run.authorize("quick.read", {"q": "x"})
        time.sleep(ticket.timeout)
        run.report_failure(ticket, TimeoutError("vendor slow"), timed_out=True)

    result = bounded(
        "Run.authorize/report_failure",
        0.3,
        lambda: with_run(policy(0.3, "quick.read"), body, tools=[quick_read]),
    )
    assert result.stop_reason == "max_seconds"


# -- approvals: not charged to max_seconds, bounded by the approval timeout -----------------
def slow_approver(request: corral.ApprovalRequest) -> bool:
    time.sleep(5)
    return True


async def slow_async_approver(request: corral.ApprovalRequest) -> bool:
    await asyncio.sleep(5)
    return True


@corral.tool(name="pay.send", effect="write")
def pay(amount: int) -> str:
    """Sends a payment."""
    return "paid"


def approval_policy(max_seconds: float, approval_timeout: float) -> corral.Policy:
    return policy(
        max_seconds,
        "pay.send",
        writes={"require_approval": True, "approval_timeout_seconds": approval_timeout},
    )


@pytest.mark.parametrize(
    ("face", "approver"),
    [
        ("Run", slow_approver),
        ("AsyncRun, sync approver", slow_approver),
        ("AsyncRun, async approver", slow_async_approver),
    ],
)
def test_a_slow_approver_is_bounded_by_the_approval_timeout(face: str, approver: Any) -> None:
    """An in-process approver that does not answer: approval_timeout at the approval
    timeout (0.3 s), not when it returns (5 s); max_seconds (30) is not what bounds it."""
    pol = approval_policy(30, 0.3)

    def pay_once(run: Any) -> Any:
        return run.call("pay.send", {"amount": 5})

    async def main() -> Any:
        return await with_async_run(pol, pay_once, tools=[pay], approver=approver)

    def go() -> Any:
        if face == "Run":
            return with_run(pol, pay_once, tools=[pay], approver=approver)
        return asyncio.run(main())

    result = bounded(f"slow approver, {face}", 0.3, go)
    assert result.stop_reason == "approval_timeout"


def test_waiting_for_an_approver_is_not_charged_to_max_seconds() -> None:
    """An approver taking 0.4 s under max_seconds 0.3: the write goes ahead, waiting counted."""

    def approver(request: corral.ApprovalRequest) -> bool:
        time.sleep(0.4)
        return True

    pol = approval_policy(0.3, 5)
    result = with_run(
        pol, lambda r: r.finish(r.call("pay.send", {"amount": 5})), tools=[pay], approver=approver
    )
    assert result.stop_reason == "ok"
    assert result.usage.waiting_seconds >= 0.4


def test_an_approval_wait_through_the_store_is_not_bounded_by_max_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's queue: while the run waits for a decision (past what would have been its
    deadline) its polls and heartbeats wait on a busy store as long as the store allows, not
    as long as the run had left; the write then goes ahead."""
    monkeypatch.setattr(approval_queue, "HEARTBEAT_SECONDS", 0.05)  # writes while it waits
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    pol = approval_policy(0.3, 10)

    def operator() -> None:
        time.sleep(0.5)  # past the run's 0.3 s: its time is not running while it waits
        with locked(path):
            time.sleep(0.3)  # the store busy: the run's polls must wait, not fail
        (pending,) = store.list_approvals()
        corral.controls.approvals.approve(store, pending.id, approver="alice")

    helper = threading.Thread(target=operator)
    helper.start()
    try:
        result = with_run(
            pol, lambda r: r.finish(r.call("pay.send", {"amount": 5})), tools=[pay], store=store
        )
    finally:
        helper.join()
        store.close()
    assert result.stop_reason == "ok"
    assert result.usage.waiting_seconds >= 0.8


# -- the store: SQLite ------------------------------------------------------------------------
@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holding the write lock of the SQLite file at ``path``."""
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


@pytest.mark.parametrize("when", ["from the start", "mid-run"])
def test_a_locked_sqlite_store_stops_the_run_at_max_seconds(tmp_path: Path, when: str) -> None:
    """A SQLite file locked by another connection: every wait ends at the deadline (not
    after busy_timeout, 10 s), the run stops with max_seconds and says its end is unrecorded."""
    store = SQLiteStore(tmp_path / "corral.db")
    lock = locked(tmp_path / "corral.db")

    def body(run: corral.Run) -> None:
        run.call("quick.read", {"q": "first"})
        if when == "mid-run":
            lock.__enter__()
        forever(run, "quick.read")

    try:
        if when == "from the start":
            lock.__enter__()
        result = bounded(
            f"SQLite locked {when}",
            0.4,
            lambda: with_run(policy(0.4, "quick.read"), body, tools=[quick_read], store=store),
        )
    finally:
        lock.__exit__(None, None, None)
        store.close()
    assert result.stop_reason == "max_seconds"
    assert result.error is not None and "could not be recorded" in result.error


def test_the_issue_example_store_down_under_max_seconds_2(tmp_path: Path) -> None:
    """The issue's example: with the store down a run under max_seconds 2 took 4.6 s."""
    store = SQLiteStore(tmp_path / "corral.db")
    model = ScriptedModel([call("quick.read", q="a"), final("done")])
    with locked(tmp_path / "corral.db"):
        result = bounded(
            "SQLite locked, corral.run (issue example)",
            2.0,
            lambda: corral.run(
                "t", model=model, tools=[quick_read], policy=policy(2, "quick.read"), store=store
            ),
        )
    store.close()
    assert result.stop_reason == "max_seconds"


def test_recording_the_end_waits_no_longer_than_the_run_has_left(tmp_path: Path) -> None:
    """A run that finished with time left, its store locked before the end is recorded:
    the result comes back by the deadline, saying the end is unrecorded."""
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    lock = locked(path)

    def body(run: corral.Run) -> None:
        run.finish(run.call("quick.read", {"q": "a"}))

    def go() -> Any:
        with corral.Run(policy(0.4, "quick.read"), tools=[quick_read], store=store) as run:
            run.call("quick.read", {"q": "a"})
            lock.__enter__()
        return run.result

    try:
        result = bounded("SQLite locked at the end", 0.4, go)
    finally:
        lock.__exit__(None, None, None)
        store.close()
    assert result.stop_reason == "control_plane_unavailable"
    assert result.error is not None and "could not be recorded" in result.error


# -- the store: PostgreSQL ----------------------------------------------------------------------
class SilentProxy:
    """A TCP proxy to PostgreSQL that can go silent: it then accepts connections and reads
    what is sent, and never answers nor forwards anything."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.silent = False
        self._closed = False
        self._socks: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._socks.append(client)
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = None
        with contextlib.suppress(OSError):
            if not self.silent:
                upstream = socket.create_connection(self.target)
                self._socks.append(upstream)
            while not self._closed:
                ready, _, _ = select.select([s for s in (client, upstream) if s], [], [], 0.1)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if not self.silent and upstream is not None:
                        (upstream if sock is client else client).sendall(data)

    def close(self) -> None:
        self._closed = True
        self._server.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.fixture
def pg_url() -> str:
    return str(crash_pg().require_postgres())


@pytest.fixture
def proxy(pg_url: str) -> Iterator[SilentProxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    p = SilentProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


def proxied(url: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = f"{parts.username + '@' if parts.username else ''}127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("when", ["from the start", "mid-run"])
def test_a_postgres_server_that_stops_answering_stops_the_run_at_max_seconds(
    pg_url: str, proxy: SilentProxy, when: str
) -> None:
    """A server that accepts and never answers (no statement_timeout can fire): the run's
    waits end at its deadline on the client, and it stops with max_seconds."""
    with crash_pg().fresh_store(proxied(pg_url, proxy.port), max_size=2) as store:

        def body(run: corral.Run) -> None:
            if when == "mid-run":
                run.call("quick.read", {"q": "first"})
            proxy.silent = True
            forever(run, "quick.read")

        if when == "from the start":
            proxy.silent = True  # before the run records its start
        result = bounded(
            f"PostgreSQL silent {when}",
            0.4,
            lambda: with_run(policy(0.4, "quick.read"), body, tools=[quick_read], store=store),
        )
        proxy.silent = False
    assert result.stop_reason == "max_seconds"


def test_a_postgres_lock_held_by_another_session_stops_the_run_at_max_seconds(pg_url: str) -> None:
    """Another session holds a lock the run's writes need: the statement is cancelled on
    the server at the deadline (not after statement_timeout) and the run stops in time."""
    import psycopg

    with crash_pg().fresh_store(pg_url) as store, psycopg.connect(pg_url) as other:

        def body(run: corral.Run) -> None:
            run.call("quick.read", {"q": "first"})
            other.execute(f"LOCK TABLE {store.schema}.corral_events IN ACCESS EXCLUSIVE MODE")
            forever(run, "quick.read")

        result = bounded(
            "PostgreSQL lock held by another session",
            0.4,
            lambda: with_run(policy(0.4, "quick.read"), body, tools=[quick_read], store=store),
        )
        other.rollback()
        # The store is usable again at once: the cancelled statements were rolled back.
        again = with_run(
            policy(5, "quick.read"),
            lambda r: r.finish(r.call("quick.read", {"q": "b"})),
            tools=[quick_read],
            store=store,
        )
    assert result.stop_reason == "max_seconds"
    assert again.stop_reason == "ok"


# -- the store contract: a deadline in the context bounds every wait ------------------------------
@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    token = DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        DEADLINE.reset(token)


def test_a_sqlite_write_waits_no_longer_than_the_deadline(tmp_path: Path) -> None:
    """With a deadline set, a write to a locked file fails at it, not after busy_timeout;
    without one the store's own busy_timeout applies again."""
    store = SQLiteStore(tmp_path / "corral.db")
    try:
        with locked(tmp_path / "corral.db"), deadline_in(0.3):
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                store.create_run(RunRecord(id="run_1"))
            assert time.monotonic() - started < 0.3 + SLACK
        store.create_run(RunRecord(id="run_1"))  # unlocked, no deadline: as before
        assert store.get_run("run_1") is not None
    finally:
        store.close()


def test_a_sqlite_store_lock_held_by_another_thread_waits_no_longer_than_the_deadline(
    tmp_path: Path,
) -> None:
    """A thread of the same process waiting on the locked file holds the store's own lock:
    a call with a deadline waits for that lock no longer than the deadline."""
    store = SQLiteStore(tmp_path / "corral.db", busy_timeout=2)
    try:
        with locked(tmp_path / "corral.db"):
            holder = threading.Thread(target=_try_to_write, args=(store,))
            holder.start()
            time.sleep(0.05)  # the holder is in SQLite's busy wait, under the store's lock
            with deadline_in(0.2):
                started = time.monotonic()
                with pytest.raises(StoreError):
                    store.get_run("run_1")
                assert time.monotonic() - started < 0.2 + SLACK
        holder.join()
    finally:
        store.close()


def _try_to_write(store: SQLiteStore) -> None:
    with contextlib.suppress(StoreError):
        store.create_run(RunRecord(id="run_x"))


def test_a_postgres_call_waits_no_longer_than_the_deadline(pg_url: str, proxy: SilentProxy) -> None:
    """With a deadline set, a call to a server that stopped answering fails at it; the
    store works again once the server answers."""
    with crash_pg().fresh_store(proxied(pg_url, proxy.port), max_size=2) as store:
        proxy.silent = True
        with deadline_in(0.3):
            started = time.monotonic()
            with pytest.raises(StoreError):
                store.get_run("run_1")
            assert time.monotonic() - started < 0.3 + SLACK
        proxy.silent = False
        with deadline_in(5):
            store.create_run(RunRecord(id="run_1"))
            assert store.get_run("run_1") is not None
