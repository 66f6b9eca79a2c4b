"""Awaiting under a deadline, and an event-loop runner that never waits on abandoned work.

A cancelled coroutine may ignore its cancellation (catch ``CancelledError`` and go
on). ``asyncio.wait_for`` and ``asyncio.run`` then wait for it to end, possibly
forever. Here a cancelled task gets :data:`CANCEL_GRACE` seconds to end; past
that it is *abandoned*: it runs on in the background while its loop runs, its
result ignored, like a sync call abandoned in its thread. :func:`abandoned` gives
a :class:`~concurrent.futures.Future` that is done when the task ends (or when its
loop closes), so that a write's claim stays renewed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from corral.gateway._inline import Watch, timeout_error
from corral.gateway.guards.killswitch import WATCH_SECONDS

T = TypeVar("T")
log = logging.getLogger("corral")

#: How long a cancelled call is given to end before it is abandoned (seconds).
CANCEL_GRACE = 0.05

# A task abandoned after its grace -> a future done when it ends or its loop closes.
_ABANDONED: weakref.WeakKeyDictionary[asyncio.Future[Any], Future[None]] = (
    weakref.WeakKeyDictionary()
)


async def bounded(task: asyncio.Future[T], timeout: float, watch: Watch | None) -> T:
    """The result of ``task`` within ``timeout`` seconds (else a ``TimeoutError`` for which
    :func:`~corral.gateway._inline.expired` is true), looking at
    ``watch`` every WATCH_SECONDS meanwhile (raising the ``Cancelled`` it returns).

    Whenever it leaves before ``task`` is done (a deadline, a switch, its own
    cancellation), ``task`` is cancelled and given :data:`CANCEL_GRACE` seconds; if it
    is still running then, it is abandoned (see :func:`abandoned`).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise timeout_error("the call", timeout)
            step = left if watch is None else min(WATCH_SECONDS, left)
            await asyncio.wait((task,), timeout=step)
            if task.done():
                return task.result()
            if watch is not None:
                cancelled = watch()
                if cancelled is not None:
                    raise cancelled
    finally:
        if not task.done():
            task.cancel()
            await _grace(task)


async def _grace(task: asyncio.Future[Any]) -> None:
    """Give a cancelled ``task`` CANCEL_GRACE seconds to end, then abandon it."""
    try:
        await asyncio.wait((task,), timeout=CANCEL_GRACE)
    finally:  # also when the caller is cancelled meanwhile
        ended: Future[None] = Future()
        if task.done():
            _ended(task, ended)
        else:
            _ABANDONED[task] = ended
            task.add_done_callback(lambda t: _ended(t, ended))


def _ended(task: asyncio.Future[Any], ended: Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned call's outcome is ignored
    if not ended.done():
        ended.set_result(None)


def abandoned(task: asyncio.Future[Any]) -> Future[None] | None:
    """A future done when ``task``, abandoned by :func:`bounded`, ends; ``None`` when
    ``task`` is not running any more."""
    if task.done():
        return None
    return _ABANDONED.get(task)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, except at the end: tasks still running (abandoned calls) are
    cancelled and given :data:`CANCEL_GRACE` seconds, then left behind with the closed
    loop instead of being waited for; nor are the default executor's threads joined.

    As ``asyncio.run`` does, the first Ctrl-C (on the main thread) cancels ``coro``
    and raises ``KeyboardInterrupt`` once it has ended.
    """
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        main = loop.create_task(coro)
        sigint = _on_sigint(loop, main)
        try:
            return loop.run_until_complete(main)
        except asyncio.CancelledError:
            if sigint is not None and sigint[1][0] and main.uncancel() == 0:
                raise KeyboardInterrupt() from None
            raise
        finally:
            if sigint is not None and signal.getsignal(signal.SIGINT) is sigint[0]:
                signal.signal(signal.SIGINT, signal.default_int_handler)
    finally:
        try:
            _close(loop)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _on_sigint(
    loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any]
) -> tuple[Callable[[int, Any], None], list[int]] | None:
    """As ``asyncio.Runner``: on the main thread, the first Ctrl-C cancels ``main``; returns
    the handler installed and the count of interruptions."""
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return None
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] == 1 and not main.done():
            main.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake a select() with a long timeout
            return
        raise KeyboardInterrupt()

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # signals unavailable in this interpreter
        return None
    return handler, count


def _drop(task: asyncio.Task[Any]) -> None:
    """Drop a task that ignores its cancellation along with its loop: its coroutine is
    closed (its ``finally`` blocks run now), and it is said once, in corral's log."""
    log.warning(
        "%s ignored its cancellation; it was abandoned and is dropped with corral.run()'s "
        "event loop",
        task.get_coro(),
    )
    with contextlib.suppress(AttributeError):
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # said above
    with contextlib.suppress(Exception):
        task.get_coro().close()
    ended = _ABANDONED.pop(task, None)
    if ended is not None and not ended.done():
        ended.set_result(None)  # it will never run again


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and wait at most CANCEL_GRACE for it (tasks abandoned already had
    theirs: they are only cancelled again), then finalize async generators."""
    left = asyncio.all_tasks(loop)
    if left:
        for task in left:
            task.cancel()
        fresh = [task for task in left if task not in _ABANDONED]
        if fresh:
            loop.run_until_complete(asyncio.wait(fresh, timeout=CANCEL_GRACE))
        else:  # one turn of the loop: the cancellations are delivered, quick tasks end
            loop.run_until_complete(asyncio.sleep(0))
        for task in left:
            if not task.done():
                _drop(task)
            elif not task.cancelled() and task.exception() is not None:
                loop.call_exception_handler(
                    {
                        "message": "unhandled exception during corral.run() shutdown",
                        "exception": task.exception(),
                        "task": task,
                    }
                )
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), CANCEL_GRACE))
