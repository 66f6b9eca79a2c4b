"""An event-loop runner that never waits on abandoned work (:func:`run`, corral's
``asyncio.run``), and the loop it keeps between runs.

A call abandoned by :mod:`corral.gateway._aio` (it ignored its cancellation past its grace)
runs on in the background while its loop runs. ``asyncio.run`` would wait for it at the end,
possibly forever; :func:`run` cancels what is left, gives it
:data:`~corral.gateway._aio.CANCEL_GRACE` seconds, and then leaves it behind with the
closed loop. A loop that ends as clean as it started is kept for the thread's next run.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` without its enum conversions
import asyncio
import atexit
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from corral.gateway import _inline
from corral.gateway._aio import _ABANDONED, CANCEL_GRACE, alone

T = TypeVar("T")
log = logging.getLogger("corral")
_SIGINT = int(signal.SIGINT)
_MAIN_IDENT = threading.main_thread().ident


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, except at the end: tasks still running (abandoned calls) are
    cancelled and given :data:`CANCEL_GRACE` seconds, then left behind with the closed
    loop instead of being waited for; nor are the default executor's threads joined.

    As ``asyncio.run`` does, the first Ctrl-C (on the main thread) cancels ``coro``
    and raises ``KeyboardInterrupt`` once it has ended.

    A loop that ends as clean as it started (see :func:`_pristine`) is not closed but kept
    for the thread's next call: a loop costs a selector, a socket pair and their closing.
    """
    loop = _take_spare() or asyncio.new_event_loop()
    clean = False
    main: asyncio.Task[T] | None = None
    try:
        asyncio.set_event_loop(loop)
        main = loop.create_task(coro)
        sigint = _on_sigint(loop, main)
        try:
            result = loop.run_until_complete(main)
        except asyncio.CancelledError:
            if sigint is not None and sigint[1][0] and main.uncancel() == 0:
                raise KeyboardInterrupt() from None
            raise
        finally:
            if sigint is not None and _signal.getsignal(_SIGINT) is sigint[0]:
                _signal.signal(_SIGINT, signal.default_int_handler)
        clean = True
        return result
    finally:
        try:
            clean = _close(loop, main) and clean
        finally:
            asyncio.set_event_loop(None)
            if not (clean and _pristine(loop) and _keep(loop)):
                loop.close()


# -- the loop kept between runs -----------------------------------------------------------
class _Spare:
    """Holds a thread's kept loop; closes it when the thread ends (its locals are dropped).

    After a fork the loop is the parent's too (its selector is shared): a child never uses
    it, nor closes it (closing unregisters the parent's wake-up socket from the selector);
    it is only marked closed.
    """

    __slots__ = ("loop", "pid")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop: asyncio.AbstractEventLoop | None = loop
        self.pid = os.getpid()

    def take(self) -> asyncio.AbstractEventLoop | None:
        loop, self.loop = self.loop, None
        if loop is None or loop.is_closed():
            return None
        if self.pid != os.getpid():
            _disown(loop)
            return None
        return loop

    def __del__(self) -> None:
        loop, self.loop = self.loop, None
        if loop is None or loop.is_closed():
            return
        if self.pid != os.getpid():
            _disown(loop)
            return
        with contextlib.suppress(Exception):  # also late in the interpreter's shutdown
            loop.close()


_spares = threading.local()


def _disown(loop: asyncio.AbstractEventLoop) -> None:
    """Mark a loop inherited through a fork closed without touching its selector."""
    with contextlib.suppress(AttributeError):
        loop._closed = True  # type: ignore[attr-defined]


def _take_spare() -> asyncio.AbstractEventLoop | None:
    spare: _Spare | None = getattr(_spares, "spare", None)
    if spare is None:
        return None
    _spares.spare = None
    return spare.take()


def _keep(loop: asyncio.AbstractEventLoop) -> bool:
    """Keep ``loop`` for this thread's next run, unless one is kept already (a run inside
    a run's thread made its own)."""
    if getattr(_spares, "spare", None) is not None:
        return False
    _spares.spare = _Spare(loop)
    return True


def _close_spare() -> None:
    spare: _Spare | None = getattr(_spares, "spare", None)
    _spares.spare = None
    if spare is not None:
        spare.__del__()


atexit.register(_close_spare)  # the main thread's (a worker's goes with its thread)


def _pristine(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` is as a new one: asyncio's own selector loop, nothing ready or
    scheduled, no reader or writer but its own wake-up socket, no signal handler, no
    executor, exception handler or task factory set, not in debug mode. Then its cancelled
    timer handles are dropped. Anything else (or another loop class): closed as before."""
    if type(loop) is not asyncio.SelectorEventLoop:
        return False
    try:
        if (
            loop._ready  # type: ignore[attr-defined]
            or loop._default_executor is not None  # type: ignore[attr-defined]
            or loop._exception_handler is not None  # type: ignore[attr-defined]
            or loop._task_factory is not None  # type: ignore[attr-defined]
            or getattr(loop, "_signal_handlers", None)
            or loop.get_debug()
            or len(loop._selector.get_map()) != 1  # type: ignore[attr-defined]
        ):
            return False
        scheduled = loop._scheduled  # type: ignore[attr-defined]
        if any(not handle.cancelled() for handle in scheduled):
            return False
        scheduled.clear()
        loop._timer_cancelled_count = 0  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - another asyncio than this one
        return False
    return True


def _on_sigint(
    loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any]
) -> tuple[Callable[[int, Any], None], list[int]] | None:
    """As ``asyncio.Runner``: on the main thread, the first Ctrl-C cancels ``main``; returns
    the handler installed and the count of interruptions. While a sync call runs inline
    (holding the loop, where a cancellation cannot reach it), Ctrl-C raises
    ``KeyboardInterrupt`` inside it at once, as it does outside an event loop."""
    if threading.get_ident() != _MAIN_IDENT:
        return None
    # The C-level calls: ``signal.getsignal``/``signal.signal`` convert to enums (~5 us each).
    if _signal.getsignal(_SIGINT) is not signal.default_int_handler:
        return None
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        if count[0] == 1 and not main.done() and not _inline.busy():
            main.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake a select() with a long timeout
            return
        raise KeyboardInterrupt()

    try:
        _signal.signal(_SIGINT, handler)
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


def _close(loop: asyncio.AbstractEventLoop, main: asyncio.Task[Any] | None) -> bool:
    """Cancel what is left and wait at most CANCEL_GRACE for it (tasks abandoned already had
    theirs: they are only cancelled again), then finalize async generators. Whether there
    was nothing to do."""
    left = set() if alone(main) else asyncio.all_tasks(loop)  # main has ended
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
    alive = getattr(loop, "_asyncgens", None)  # asyncio's own loops keep them in a WeakSet
    if alive is not None and not alive:  # none alive: nothing to finalize, no task for it
        return not left
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), CANCEL_GRACE))
    return False
