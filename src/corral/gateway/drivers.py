"""Drivers: run a governed flow synchronously or asynchronously.

The gateway and the model-call flow are generators that yield what must be
waited for; these drivers do the waiting. The logic exists once; only waiting
differs between the sync and the async face.

Deadlines. Every call a flow waits for is bounded: a tool attempt and a model
call by the timeout the flow gives (clamped to the time the run has left), an
in-process approver by the approval timeout. How depends on the call:

- a sync call made from the main thread (with no other ``SIGALRM`` handler
  installed) is called inline and interrupted at its deadline by a timer signal
  (:mod:`corral.gateway._inline`): sync tools from ``Run``, sync models and approvers from
  either face (a sync model blocks the event loop while it runs, as it always did);
- a sync tool called by ``corral.run``'s own loop (the event loop that the sync entry point
  owns) is called inline the same way, through :func:`execute_sync`, when its task is the
  only one on that loop (nothing else waits for the loop meanwhile; see :func:`execute_loop`);
- elsewhere a sync call runs in a worker thread and is *abandoned* at its deadline
  (:mod:`corral.gateway._workers`: Python cannot stop a thread; its result is ignored): sync
  tools under ``AsyncRun``/``arun`` (whose event loop is the caller's, never blocked by a
  tool), and every sync call made off the main thread;
- an async call is cancelled at its deadline; one that ignores its cancellation is
  given :data:`~corral.gateway._aio.CANCEL_GRACE` seconds, then abandoned
  (:mod:`corral.gateway._aio`).

An abandoned attempt carries a future that is done when the call ends
(``Attempt.pending``), so a write's claim stays renewed until then. ``corral.run``
runs its event loop with :func:`corral.gateway._runner.run`, which does not wait at the end
for calls that ignore their cancellation.

Kill switch. While a call runs the driver looks at the kill switch every
:data:`~corral.gateway.guards.killswitch.WATCH_SECONDS` (a cached read; see
:func:`corral.gateway.guards.killswitch.watch`). When a ``stop_all`` switch comes to cover
it, the call is stopped the way its deadline would stop it — an inline sync call
(tool or model) is interrupted by the timer signal, a call in a worker thread is
abandoned, an async call is cancelled — and the flow gets a
:class:`~corral.gateway.guards.killswitch.Cancelled` attempt: the run stops with
``kill_switch``.

While a driver runs a flow, :data:`corral.clock.DEADLINE` is set (to
:data:`~corral.clock.DRIVEN` until the run's time check (``RunTime.check``) sets its deadline), so
that the waits on the run's behalf that follow (the store's, output hygiene) end at
the run's deadline; it is cleared again before an approval or a pause, whose waits
are not the run's.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from concurrent.futures import Future
from typing import Any, TypeVar, cast

from corral.clock import DEADLINE, DRIVEN, SystemClock
from corral.controls.approvals import ApprovalDecision, ApprovalRequest
from corral.gateway import _aio, _runner
from corral.gateway._inline import Watch, can_alarm, expired, run_inline, timeout_error
from corral.gateway._workers import run_in_thread, submit
from corral.gateway.guards.killswitch import Cancelled
from corral.gateway.ops import Approve, Attempt, CallModel, Execute, Sleep

A = TypeVar("A")


# -- calling a user's callable under a deadline ---------------------------------------
def _timed_out(what: str, timeout: float) -> Attempt:
    return Attempt(False, error=timeout_error(what, timeout), timed_out=True)


def _to_end(job: tuple[Callable[[Any], Any], Any, float, Watch | None]) -> Any:
    """``fn(arg)``, and an awaitable it returns awaited in an event loop of its own."""
    fn, arg, timeout, watch = job
    result = fn(arg)
    if inspect.isawaitable(result):
        return _runner.run(_settle(result, timeout, watch))
    return result


async def _settle(awaitable: Any, timeout: float, watch: Watch | None) -> Any:
    return await _aio.bounded(asyncio.ensure_future(awaitable), timeout, watch)


def call_sync(
    fn: Callable[[A], Any], arg: A, timeout: float, watch: Watch | None, what: str
) -> Attempt:
    """``fn(arg)`` from synchronous code, within ``timeout`` seconds: inline under the
    timer signal on the main thread, else in a worker thread. An awaitable result is
    awaited within the same deadline."""
    if timeout <= 0:
        return _timed_out(what, timeout)
    job = (fn, arg, timeout, watch)
    if can_alarm():
        return run_inline(_to_end, job, timeout, watch, what)
    return run_in_thread(_to_end, job, timeout, watch, what)


async def _attempt(
    make: Callable[[], Any],
    timeout: float,
    watch: Watch | None,
    what: str,
    started: float,
    thread: Future[Any] | None = None,
) -> Attempt:
    """Await what ``make()`` returns within ``timeout`` seconds, as an attempt (in the
    caller's task, see :func:`corral.gateway._aio.awaiting`)."""
    bound = _aio.Bound(timeout, watch)
    try:
        value = await _aio.awaiting(make(), bound)
    except Cancelled as exc:
        return Attempt(
            False,
            error=exc,
            seconds=time.monotonic() - started,
            pending=_pending(bound, thread),
        )
    except TimeoutError as exc:
        error = timeout_error(what, timeout) if expired(exc) else exc
        return Attempt(
            False,
            error=error,
            timed_out=True,
            seconds=time.monotonic() - started,
            pending=_pending(bound, thread),
        )
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)


async def await_within(
    call: Awaitable[A], timeout: float, watch: Callable[[], BaseException | None] | None
) -> A:
    """Await ``call`` in the caller's task within ``timeout`` seconds, looking at ``watch``
    (a kill-switch watch) every ``WATCH_SECONDS`` once it suspends: its result, else the
    ``Cancelled`` the watch returned, or a ``TimeoutError`` for which :func:`expired` is
    true (see :func:`corral.gateway._aio.awaiting`). For a caller that executes a tool
    itself under its ticket (a framework's own tool node)."""
    result: A = await _aio.awaiting(call, _aio.Bound(timeout, cast(Watch | None, watch)))
    return result


def _pending(bound: _aio.Bound, thread: Future[Any] | None) -> Future[Any] | None:
    """What an abandoned call still runs as: its thread, or its task (None once ended)."""
    if thread is not None:
        return None if thread.done() else thread
    pending = bound.pending
    return None if pending is None or pending.done() else pending


async def call_async(
    fn: Callable[[A], Any],
    arg: A,
    timeout: float,
    watch: Watch | None,
    what: str,
    *,
    coroutine_function: bool,
) -> Attempt:
    """``fn(arg)`` from async code, within ``timeout`` seconds: a coroutine function is
    awaited on the running loop; a plain callable is called inline under the timer
    signal on the main thread, else in a worker thread. An awaitable result is awaited
    within the same deadline."""
    if timeout <= 0:
        return _timed_out(what, timeout)
    started = time.monotonic()
    if coroutine_function:
        return await _attempt(lambda: fn(arg), timeout, watch, what, started)
    if can_alarm():
        first = run_inline(fn, arg, timeout, watch, what)
    else:
        thread = submit(fn, arg)
        first = await _attempt(lambda: _aio.chained(thread), timeout, watch, what, started, thread)
    if not (first.ok and inspect.isawaitable(first.value)):
        return first
    awaitable = first.value
    left = timeout - (time.monotonic() - started)
    if left <= 0:
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never started: closed, not left to warn
        return _timed_out(what, timeout)
    return await _attempt(lambda: awaitable, left, watch, what, started)


# -- tools -------------------------------------------------------------------------------
def _invoke(op: Execute) -> Any:
    tool = op.eff.tool
    if tool.context_param is None:
        return tool.fn(**op.args)
    kwargs = dict(op.args)
    kwargs[tool.context_param] = op.ctx
    return tool.fn(**kwargs)


def execute_sync(op: Execute) -> Attempt:
    """Run one attempt of a tool from synchronous code."""
    name = op.eff.tool.name
    if op.timeout <= 0:
        return _timed_out(name, op.timeout)
    if op.eff.tool.is_async:  # in a thread with a loop of its own, abandoned at the deadline
        return run_in_thread(
            _to_end, (_invoke, op, op.timeout, op.watch), op.timeout, op.watch, name
        )
    if can_alarm():
        return run_inline(_invoke, op, op.timeout, op.watch, name)
    return run_in_thread(_invoke, op, op.timeout, op.watch, name)


async def execute_async(op: Execute) -> Attempt:
    """Run one attempt of a tool from async code (a sync tool runs in a worker thread, so
    the event loop goes on meanwhile)."""
    name = op.eff.tool.name
    if op.timeout <= 0:
        return _timed_out(name, op.timeout)
    started = time.monotonic()
    if op.eff.tool.is_async:
        return await _attempt(lambda: _invoke(op), op.timeout, op.watch, name, started)
    thread = submit(_invoke, op)
    return await _attempt(lambda: _aio.chained(thread), op.timeout, op.watch, name, started, thread)


def _alone() -> bool:
    """Whether the calling task is the only task on its loop (the only one in the process
    says so cheaply; else ``asyncio.all_tasks`` decides)."""
    return _aio.alone(asyncio.current_task()) or len(asyncio.all_tasks()) == 1


def runs_inline(op: Execute) -> bool:
    """Whether an attempt asked for from an event loop that corral owns (``corral.run``'s)
    may hold that loop and run inline, as :meth:`~corral.Run.call` runs it: a sync tool, on
    the main thread with the timer signal free (:func:`~corral.gateway._inline.can_alarm`),
    and the calling task the only one on the loop — no other task (an abandoned call, one of
    the model's or the caller's) waits for the loop meanwhile."""
    return not op.eff.tool.is_async and can_alarm() and _alone()


def execute_held(op: Execute) -> Attempt:
    """:func:`execute_sync` from inside the running event loop, which it holds until the
    attempt ends. The tool sees what it would see in a worker thread: no running event loop
    (so one of its own, ``asyncio.run`` inside it, works) and a copy of the caller's
    context."""
    loop = asyncio._get_running_loop()
    asyncio._set_running_loop(None)
    try:
        attempt: Attempt = contextvars.copy_context().run(execute_sync, op)
    finally:
        asyncio._set_running_loop(loop)
    return attempt


async def execute_loop(op: Execute) -> Attempt:
    """One attempt of a tool from ``corral.run``'s own event loop: inline when
    :func:`runs_inline`, else as :func:`execute_async` runs it."""
    if runs_inline(op):
        return execute_held(op)
    return await execute_async(op)


# -- models and approvers ----------------------------------------------------------------
def _respond(op: CallModel) -> Any:
    return op.model.respond(op.request)


def _model_name(op: CallModel) -> str:
    return f"model {getattr(op.model, 'name', type(op.model).__name__)!s}"


async def call_model_async(op: CallModel) -> Attempt:
    """Call the model of ``op`` from async code, within its timeout."""
    coroutine_function = inspect.iscoroutinefunction(op.model.respond)
    return await call_async(
        _respond, op, op.timeout, op.watch, _model_name(op), coroutine_function=coroutine_function
    )


def _no_decision(request: ApprovalRequest) -> ApprovalDecision:
    # Not an approval; the flow judges the wait (longer than the timeout: approval_timeout).
    return ApprovalDecision(
        approved=False, reason=f"the approver gave no decision within {request.timeout:g} s"
    )


def _approval_answer(attempt: Attempt, request: ApprovalRequest) -> Any:
    if attempt.ok:
        return attempt.value
    if attempt.timed_out and expired(attempt.error):
        return _no_decision(request)
    assert attempt.error is not None
    raise attempt.error  # the channel failed: the flow decides (fail closed)


def _approve_sync(approver: Any, op: Approve) -> Any:
    request = op.request
    attempt = call_sync(approver, request, request.timeout, None, "the approver")
    return _approval_answer(attempt, request)


async def _approve_async(approver: Any, op: Approve) -> Any:
    request = op.request
    attempt = await call_async(
        approver,
        request,
        request.timeout,
        None,
        "the approver",
        coroutine_function=inspect.iscoroutinefunction(approver),
    )
    return _approval_answer(attempt, request)


# -- the drivers -------------------------------------------------------------------------
def drive_sync(flow: Generator[Any, Any, Any], *, approver: Any, clock: Any) -> Any:
    """Run ``flow`` to completion, waiting in this thread."""
    token = DEADLINE.set(DRIVEN)
    try:
        op = next(flow)
        while True:
            if isinstance(op, Execute):
                result: Any = execute_sync(op)
            elif isinstance(op, CallModel):
                result = call_sync(_respond, op, op.timeout, op.watch, _model_name(op))
            elif isinstance(op, Approve):
                DEADLINE.set(DRIVEN)  # the wait is not the run's: what follows, until the
                try:  # flow checks the run's time again, waits as it would outside a run
                    result = _approve_sync(approver, op)
                except Exception as exc:  # the channel failed: the flow decides (fail closed)
                    op = flow.throw(exc)
                    continue
            elif isinstance(op, Sleep):
                DEADLINE.set(DRIVEN)  # the pause may be an approval's, its next poll follows
                clock.sleep(op.seconds)
                result = None
            else:  # pragma: no cover - the flows yield only the ops above
                raise TypeError(f"unknown operation {op!r}")
            op = flow.send(result)
    except StopIteration as done:
        return done.value
    finally:
        DEADLINE.reset(token)


async def drive_async(
    flow: Generator[Any, Any, Any], *, approver: Any, clock: Any, owned: bool = False
) -> Any:
    """Run ``flow`` to completion, awaiting on the running event loop (``owned``: a loop
    of corral's own, whose tool attempts run as :func:`execute_loop` runs them)."""
    token = DEADLINE.set(DRIVEN)
    try:
        op = next(flow)
        while True:
            if isinstance(op, Execute):
                result: Any = await (execute_loop(op) if owned else execute_async(op))
            elif isinstance(op, CallModel):
                result = await call_model_async(op)
            elif isinstance(op, Approve):
                DEADLINE.set(DRIVEN)  # as in drive_sync
                try:
                    result = await _approve_async(approver, op)
                except Exception as exc:  # the channel failed: the flow decides (fail closed)
                    op = flow.throw(exc)
                    continue
            elif isinstance(op, Sleep):
                DEADLINE.set(DRIVEN)
                if isinstance(clock, SystemClock):
                    await asyncio.sleep(op.seconds)
                else:
                    clock.sleep(op.seconds)
                result = None
            else:  # pragma: no cover
                raise TypeError(f"unknown operation {op!r}")
            op = flow.send(result)
    except StopIteration as done:
        return done.value
    finally:
        DEADLINE.reset(token)


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` in an event loop of its own (:func:`corral.gateway._runner.run`), with a clear
    error when called from inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _runner.run(coro)
    coro.close()
    from corral.exceptions import ConfigError

    raise ConfigError(
        "corral.run() was called inside a running event loop; use `await corral.arun(...)`"
    )
