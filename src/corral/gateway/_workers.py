"""Worker threads for calls that may have to be abandoned at their deadline.

Python cannot stop a thread: a call running in one is *abandoned* at its
deadline (its result is ignored) and keeps its thread until it returns by itself,
possibly never. The attempt carries the thread's future (``Attempt.pending``), so
that a write's claim stays renewed until the thread ends.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from corral.gateway._inline import Watch, timeout_error
from corral.gateway.guards.killswitch import WATCH_SECONDS, Cancelled
from corral.gateway.ops import Attempt

_P = ParamSpec("_P")
_T = TypeVar("_T")
A = TypeVar("A")


class _AbandonablePool(Executor):
    """Daemon worker threads that grow with demand and retire when idle.

    The standard ``ThreadPoolExecutor`` would make the interpreter wait at exit for a
    call abandoned at its deadline and, once its workers are all stuck, queue new calls
    behind them. Here a stuck worker neither blocks exit (daemon) nor delays other calls
    (a new worker is started whenever none is idle).
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


POOL = _AbandonablePool("corral-worker")
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=POOL._reset)


def submit(fn: Callable[[A], Any], arg: A) -> Future[Any]:
    """``fn(arg)`` in a worker thread, in a copy of the caller's context."""
    return POOL.submit(contextvars.copy_context().run, fn, arg)


def wait(future: Future[Any], timeout: float, watch: Watch | None) -> Any:
    """``future.result()`` within ``timeout`` seconds (else ``TimeoutError``, never before
    the deadline), looking at ``watch`` every WATCH_SECONDS meanwhile (raising the
    :class:`Cancelled` it returns)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        try:
            return future.result(timeout=left if watch is None else min(WATCH_SECONDS, left))
        except TimeoutError:
            if future.done():
                raise  # the call itself raised TimeoutError
        if watch is not None and deadline - time.monotonic() > 0:
            cancelled = watch()
            if cancelled is not None:
                raise cancelled


def run_in_thread(
    fn: Callable[[A], Any], arg: A, timeout: float, watch: Watch | None, what: str
) -> Attempt:
    """``fn(arg)`` in a worker thread, abandoned at ``timeout`` seconds or when ``watch``
    finds a stop_all switch (the attempt's ``pending`` is then the thread's future)."""
    started = time.monotonic()
    future = submit(fn, arg)
    try:
        value = wait(future, timeout, watch)
    except Cancelled as exc:  # abandoned: the thread cannot be stopped, its result is ignored
        pending = None if future.done() else future
        return Attempt(False, error=exc, seconds=time.monotonic() - started, pending=pending)
    except TimeoutError as exc:
        if not future.done():
            return Attempt(
                False,
                error=timeout_error(what, timeout),
                timed_out=True,
                seconds=time.monotonic() - started,
                pending=future,
            )
        return Attempt(False, error=exc, timed_out=True, seconds=time.monotonic() - started)
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)
