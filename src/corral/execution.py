"""Drivers: run a governed flow synchronously or asynchronously.

The gateway and the model-call flow are generators that yield what must be
waited for; these drivers do the waiting. The logic exists once; only waiting
differs between the sync and the async face.

Timeouts. An async tool is cancelled at its deadline. A sync tool called from
the main thread (with no other ``SIGALRM`` handler installed) is interrupted at
its deadline by a timer signal; elsewhere it runs in a worker thread and is
*abandoned* at its deadline (Python cannot stop a thread; its result is ignored):
the attempt carries the thread's future (``Attempt.pending``), so a write's claim
stays renewed until the thread ends.

Kill switch. While a call runs the driver looks at the kill switch every
:data:`~corral.guards.killswitch.WATCH_SECONDS` (a cached read; see
:func:`corral.guards.killswitch.watch`). When a ``stop_all`` switch comes to cover
it, an async tool or an async model call is cancelled, a sync tool running in a
worker thread is abandoned (as at a deadline), and the flow gets a
:class:`~corral.guards.killswitch.Cancelled` attempt: the run stops with
``kill_switch``. A sync tool called from the main thread (bounded by the timer
signal) is interrupted by the same signal: a watcher thread makes the check (it
reads the store, which must not happen in a signal handler) and signals the main
thread, whose handler raises inside the tool as at a deadline. A sync model call
runs in the caller's thread without a timer and is not interrupted: it runs to its
end, and the switch stops the run at its next check.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` without its enum conversions
import asyncio
import contextlib
import contextvars
import inspect
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from .clock import SystemClock
from .gateway import Approve, Attempt, Execute, Sleep
from .guards.killswitch import WATCH_SECONDS, Cancelled
from .models.base import Model, ModelRequest

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _AbandonablePool(Executor):
    """Daemon worker threads that grow with demand and retire when idle.

    A tool abandoned at its deadline keeps its thread until it returns by itself,
    possibly never: the standard ``ThreadPoolExecutor`` would make the interpreter wait
    for it at exit and, once its workers are all stuck, queue new calls behind them.
    Here a stuck worker neither blocks exit (daemon) nor delays other calls (a new
    worker is started whenever none is idle).
    """

    IDLE_SECONDS = 30.0

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()

    def _reset(self) -> None:
        # Also in a forked child, which inherits the counts but none of the threads (and
        # perhaps a lock held by one of them): it starts with no workers.
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        future: Future[_T] = Future()
        with self._lock:
            self._queue.put((future, lambda: fn(*args, **kwargs)))
            if self._idle:
                self._idle -= 1  # that idle worker now owes the queue one item
                return future
            self._count += 1
            name = f"{self._name}-{self._count}"
        threading.Thread(target=self._work, name=name, daemon=True).start()
        return future

    def _work(self) -> None:
        block = True  # a new worker owes the queue the item it was started for
        while True:
            try:
                future, call = self._queue.get(timeout=None if block else self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # nobody counted on this worker: retire
                        self._idle -= 1
                        return
                block = True  # a submit counted on it: an item is on its way
                continue
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call
            with self._lock:
                self._idle += 1
            block = False


_POOL = _AbandonablePool("corral-tool")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL._reset)


Watch = Callable[[], Cancelled | None]


@dataclass(frozen=True, slots=True)
class CallModel:
    model: Model
    request: ModelRequest
    timeout: float
    watch: Watch | None = None


class _Deadline(BaseException):
    """Raised inside a sync tool by the timer signal (a BaseException so tools don't swallow it)."""


class _Switched(BaseException):
    """Raised inside a sync tool by the timer signal when a stop_all switch covers it."""

    def __init__(self, cancelled: Cancelled) -> None:
        super().__init__(str(cancelled))
        self.cancelled = cancelled


_armed = False
_deadline_at = 0.0
_HAS_ITIMER = hasattr(signal, "setitimer")
_SIGALRM = int(getattr(signal, "SIGALRM", 14))
_ITIMER_REAL = int(getattr(signal, "ITIMER_REAL", 0))
_MAIN_IDENT = threading.main_thread().ident


def _on_alarm(signum: int, frame: Any) -> None:
    if not _armed:
        return
    cancelled = _watcher.take()
    if cancelled is not None:
        raise _Switched(cancelled)
    left = _deadline_at - time.monotonic()
    if left <= 0:
        raise _Deadline()
    # Sent by the watcher for a call that has since ended: this call's timer goes on.
    _signal.setitimer(_ITIMER_REAL, left)


class _InlineWatcher:
    """Watches the kill switch for the sync tool running inline in the main thread.

    The check reads the store, which must not happen inside a signal handler (the tool
    may be using the store): a daemon thread makes it, every WATCH_SECONDS while such a
    call runs, and when a stop_all switch covers the call it sends the timer signal to
    the main thread, whose handler raises inside the tool as at a deadline. Arming costs
    the call two assignments; the thread retires after IDLE_SECONDS without calls.
    """

    IDLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._op: tuple[int, Watch, float] | None = None  # (call number, check, started)
        self._seq = 0
        self._found: tuple[int, Cancelled] | None = None

    def arm(self, watch: Watch, started: float) -> None:
        self._seq += 1
        self._op = (self._seq, watch, started)
        if not self._running:
            with self._lock:
                if not self._running:
                    self._running = True
                    threading.Thread(
                        target=self._run, name="corral-kill-watch", daemon=True
                    ).start()

    def disarm(self) -> None:
        self._op = None

    def take(self) -> Cancelled | None:
        """The cancellation found for the call running now, if any (in the signal handler)."""
        found, op = self._found, self._op
        if found is None or op is None or found[0] != op[0]:
            return None
        self._found = None
        return found[1]

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(WATCH_SECONDS)
            op = self._op
            now = time.monotonic()
            if op is None:
                if now - idle_since >= self.IDLE_SECONDS:
                    with self._lock:
                        if self._op is None:
                            self._running = False
                            return
                continue
            idle_since = now
            seq, watch, started = op
            if now - started < WATCH_SECONDS:
                continue  # just checked before the call started
            cancelled = watch()
            if cancelled is not None and self._op is op:
                self._found = (seq, cancelled)
                signal.pthread_kill(_MAIN_IDENT, _SIGALRM)  # type: ignore[arg-type]


_watcher = _InlineWatcher()


def _can_alarm() -> bool:
    if not _HAS_ITIMER or threading.get_ident() != _MAIN_IDENT:
        return False
    if _armed:
        return False  # a tool calling the gateway again: the outer timer stays in charge
    # The C-level lookup: ``signal.getsignal`` converts to an enum and costs ~5 us a call.
    handler = _signal.getsignal(_SIGALRM)
    if handler is _on_alarm:
        return True
    if handler in (signal.SIG_DFL, None):
        signal.signal(signal.SIGALRM, _on_alarm)
        return True
    return False


def _invoke(op: Execute) -> Any:
    tool = op.eff.tool
    if tool.context_param is None:
        return tool.fn(**op.args)
    kwargs = dict(op.args)
    kwargs[tool.context_param] = op.ctx
    return tool.fn(**kwargs)


def _timeout_error(op: Execute) -> TimeoutError:
    return TimeoutError(f"{op.eff.tool.name} gave no result within {op.timeout:.3g} s")


def _run_inline(op: Execute) -> Attempt:
    global _armed, _deadline_at
    started = time.monotonic()
    try:
        try:
            _deadline_at = started + op.timeout
            _armed = True
            if op.watch is not None:
                _watcher.arm(op.watch, started)
            _signal.setitimer(_ITIMER_REAL, op.timeout)
            value = _invoke(op)
        finally:
            _armed = False
            _watcher.disarm()
            _signal.setitimer(_ITIMER_REAL, 0)
    except _Switched as exc:
        # Also when the switch was found just as the tool returned: it may have happened.
        return Attempt(False, error=exc.cancelled, seconds=time.monotonic() - started)
    except _Deadline:
        # Also when the timer fired between the tool's return and the disarming above.
        return Attempt(
            False, error=_timeout_error(op), timed_out=True, seconds=time.monotonic() - started
        )
    except TimeoutError as exc:
        return Attempt(False, error=exc, timed_out=True, seconds=time.monotonic() - started)
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)


def _wait(future: Future[Any], timeout: float, watch: Watch | None) -> Any:
    """``future.result(timeout)``, looking at ``watch`` every WATCH_SECONDS meanwhile."""
    if watch is None:
        return future.result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return future.result(timeout=max(0.0, min(WATCH_SECONDS, left)))
        except TimeoutError:
            if future.done() or left <= WATCH_SECONDS:
                raise
        cancelled = watch()
        if cancelled is not None:
            raise cancelled


async def _bounded(awaitable: Any, timeout: float, watch: Watch | None) -> Any:
    """``asyncio.wait_for(awaitable, timeout)``, cancelling it when ``watch`` says so."""
    if watch is None:
        return await asyncio.wait_for(awaitable, timeout)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(awaitable)
    deadline = loop.time() + timeout
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError()
            done, _ = await asyncio.wait((task,), timeout=min(WATCH_SECONDS, left))
            if done:
                return task.result()
            cancelled = watch()
            if cancelled is not None:
                raise cancelled
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task  # as wait_for does: the tool sees its cancellation through


def _run_in_thread(fn: Callable[[], Any], op: Execute) -> Attempt:
    started = time.monotonic()
    future = _POOL.submit(contextvars.copy_context().run, fn)
    try:
        value = _wait(future, op.timeout, op.watch)
    except Cancelled as exc:  # abandoned: the thread cannot be stopped, its result is ignored
        pending = None if future.done() else future
        return Attempt(False, error=exc, seconds=time.monotonic() - started, pending=pending)
    except TimeoutError as exc:
        if not future.done():
            return Attempt(
                False,
                error=_timeout_error(op),
                timed_out=True,
                seconds=time.monotonic() - started,
                pending=future,
            )
        return Attempt(False, error=exc, timed_out=True, seconds=time.monotonic() - started)
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)


def execute_sync(op: Execute) -> Attempt:
    """Run one attempt of a tool from synchronous code."""
    if op.timeout <= 0:
        return Attempt(False, error=_timeout_error(op), timed_out=True)
    if op.eff.tool.is_async:

        async def bounded() -> Any:
            return await _bounded(_invoke(op), op.timeout, op.watch)

        return _run_in_thread(lambda: asyncio.run(bounded()), op)
    if _can_alarm():
        return _run_inline(op)
    return _run_in_thread(lambda: _invoke(op), op)


async def execute_async(op: Execute) -> Attempt:
    """Run one attempt of a tool from async code."""
    started = time.monotonic()
    if op.timeout <= 0:
        return Attempt(False, error=_timeout_error(op), timed_out=True)
    thread: Future[Any] | None = None
    try:
        if op.eff.tool.is_async:
            value = await _bounded(_invoke(op), op.timeout, op.watch)
        else:
            thread = _POOL.submit(contextvars.copy_context().run, _invoke, op)
            # Cancelling the asyncio wrapper abandons the thread (it runs on, ignored).
            value = await _bounded(asyncio.wrap_future(thread), op.timeout, op.watch)
    except Cancelled as exc:
        pending = thread if thread is not None and not thread.done() else None
        return Attempt(False, error=exc, seconds=time.monotonic() - started, pending=pending)
    except TimeoutError as exc:
        elapsed = time.monotonic() - started
        error = _timeout_error(op) if elapsed >= op.timeout * 0.99 else exc
        pending = thread if thread is not None and not thread.done() else None
        return Attempt(False, error=error, timed_out=True, seconds=elapsed, pending=pending)
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)


def _call_model_sync(op: CallModel) -> Attempt:
    async def bounded() -> Any:
        result = op.model.respond(op.request)
        if inspect.isawaitable(result):
            return await _bounded(_as_coro(result), op.timeout, op.watch)
        return result

    try:
        return Attempt(True, value=asyncio.run(bounded()))
    except Cancelled as exc:
        return Attempt(False, error=exc)
    except TimeoutError as exc:
        return Attempt(False, error=exc, timed_out=True)
    except Exception as exc:
        return Attempt(False, error=exc)


async def _as_coro(awaitable: Any) -> Any:
    return await awaitable


async def _call_model_async(op: CallModel) -> Attempt:
    try:
        result = op.model.respond(op.request)
        if inspect.isawaitable(result):
            result = await _bounded(_as_coro(result), op.timeout, op.watch)
        return Attempt(True, value=result)
    except Cancelled as exc:
        return Attempt(False, error=exc)
    except TimeoutError as exc:
        return Attempt(False, error=exc, timed_out=True)
    except Exception as exc:
        return Attempt(False, error=exc)


def _approve_sync(approver: Any, op: Approve) -> Any:
    answer = approver(op.request)
    if inspect.isawaitable(answer):
        return asyncio.run(_as_coro(answer))
    return answer


def drive_sync(flow: Generator[Any, Any, Any], *, approver: Any, clock: Any) -> Any:
    """Run ``flow`` to completion, waiting in this thread."""
    try:
        op = next(flow)
        while True:
            if isinstance(op, Execute):
                result: Any = execute_sync(op)
            elif isinstance(op, CallModel):
                result = _call_model_sync(op)
            elif isinstance(op, Approve):
                try:
                    result = _approve_sync(approver, op)
                except Exception as exc:  # the channel failed: the flow decides (fail closed)
                    op = flow.throw(exc)
                    continue
            elif isinstance(op, Sleep):
                clock.sleep(op.seconds)
                result = None
            else:  # pragma: no cover - the flows yield only the ops above
                raise TypeError(f"unknown operation {op!r}")
            op = flow.send(result)
    except StopIteration as done:
        return done.value


async def drive_async(flow: Generator[Any, Any, Any], *, approver: Any, clock: Any) -> Any:
    """Run ``flow`` to completion, awaiting on the running event loop."""
    try:
        op = next(flow)
        while True:
            if isinstance(op, Execute):
                result: Any = await execute_async(op)
            elif isinstance(op, CallModel):
                result = await _call_model_async(op)
            elif isinstance(op, Approve):
                try:
                    answer = approver(op.request)
                    result = await answer if inspect.isawaitable(answer) else answer
                except Exception as exc:  # the channel failed: the flow decides (fail closed)
                    op = flow.throw(exc)
                    continue
            elif isinstance(op, Sleep):
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


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` with a clear error when called from inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    from .exceptions import ConfigError

    raise ConfigError(
        "corral.run() was called inside a running event loop; use `await corral.arun(...)`"
    )
