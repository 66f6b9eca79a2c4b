"""Awaiting under a deadline, and what a call abandoned past its grace leaves behind.

A cancelled coroutine may ignore its cancellation (catch ``CancelledError`` and go
on). ``asyncio.wait_for`` and ``asyncio.run`` then wait for it to end, possibly
forever. Here a cancelled task gets :data:`CANCEL_GRACE` seconds to end; past
that it is *abandoned*: it runs on in the background while its loop runs, its
result ignored, like a sync call abandoned in its thread. :func:`abandoned` gives
a :class:`~concurrent.futures.Future` that is done when the task ends (or when its
loop closes), so that a write's claim stays renewed meanwhile. The event-loop runner that
leaves such a task behind rather than wait for it is :mod:`corral.gateway._runner`.

:func:`awaiting` bounds a call without a task of its own: the call's coroutine (or a
future) is driven in the caller's task, in a copy of its context, and only once it
suspends are a deadline and the kill-switch watch armed, as one timer handle on the loop
that cancels the caller's task (the way ``asyncio.timeout`` does). A call that never
suspends costs no task, no timer and no turn of the loop. One that ignores its
cancellation is moved into a task of its own at that point, given its grace, and then
abandoned as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import types
import weakref
from collections.abc import Generator
from concurrent.futures import Future
from typing import Any, TypeVar

from corral.gateway._inline import Watch, timeout_error
from corral.gateway.guards.killswitch import WATCH_SECONDS

T = TypeVar("T")

#: How long a cancelled call is given to end before it is abandoned (seconds).
CANCEL_GRACE = 0.05

#: asyncio's registry of the tasks of every loop (CPython 3.11's: done tasks stay until they are
#: collected); ``None`` where it has another shape, and :func:`alone` answers ``False``.
_TASKS: Any = getattr(asyncio.tasks, "_all_tasks", None)


def alone(task: asyncio.Future[Any] | None) -> bool:
    """Whether ``task`` is the only task in the process, done or not (asyncio's registry
    holds it and nothing else): a fraction of ``asyncio.all_tasks``' time. ``False`` also
    when that cannot be told so cheaply; then ask ``all_tasks``."""
    tasks = _TASKS
    return tasks is not None and len(tasks) == 1 and task in tasks


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


class Bound:
    """One call awaited by :func:`awaiting`: its deadline, its kill-switch watch, and once it
    has ended, :attr:`pending` — a future done when it ends, if it was abandoned."""

    __slots__ = (
        "_at_deadline",
        "_base",
        "_handle",
        "_loop",
        "_task",
        "context",
        "deadline",
        "pending",
        "reason",
        "timeout",
        "watch",
    )

    def __init__(self, timeout: float, watch: Watch | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.deadline = self._loop.time() + timeout
        self.watch = watch
        self.context = contextvars.copy_context()  # the call's own, as a task would have
        self.reason: BaseException | None = None  # why this bound cancelled the call
        self.pending: Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._base = 0
        self._at_deadline = False

    def _arm(self, now: float) -> None:
        at = self.deadline if self.watch is None else min(self.deadline, now + WATCH_SECONDS)
        self._at_deadline = at >= self.deadline
        self._handle = self._loop.call_at(at, self._tick)

    def _tick(self) -> None:
        """The timer: look at the kill switch, else at the deadline, else wait on."""
        self._handle = None
        if self.watch is not None:
            try:
                cancelled = self.watch()
            except Exception as exc:  # the call fails with it, as if raised where it waits
                self._cancel(exc)
                return
            if cancelled is not None:
                self._cancel(cancelled)
                return
        if self._at_deadline:
            self._cancel(timeout_error("the call", self.timeout))
            return
        self._arm(self._loop.time())

    def _cancel(self, reason: BaseException) -> None:
        assert self._task is not None
        self.reason = reason
        self._task.cancel()

    def _start(self) -> bool:
        """Arm the bound as the call suspends; False when there is no task to cancel."""
        task = asyncio.current_task(self._loop)
        if task is None:
            return False
        self._task = task
        self._base = task.cancelling()
        self._arm(self._loop.time())  # past the deadline: it fires at the loop's next turn
        return True

    def _stop(self) -> bool:
        """Disarm (once); whether a cancellation of the caller's task is still asked (not
        this bound's, nor one the call took back, as its own ``asyncio.timeout`` does)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None
        if task is None:
            return False
        if self.reason is not None:
            task.uncancel()
        return task.cancelling() > self._base


def _steps(call: Any) -> Any:
    """What drives ``call`` step by step: a coroutine (or generator-based one) itself, else
    its ``__await__`` iterator (a future, an awaitable object)."""
    if hasattr(call, "send") and hasattr(call, "throw"):
        return call
    return call.__await__()


@types.coroutine
def awaiting(call: Any, bound: Bound) -> Generator[Any, Any, Any]:
    """Await ``call`` (a coroutine, a future or another awaitable) under ``bound``, in the
    caller's task: the result of ``call``, else (the call cut at its deadline) a
    ``TimeoutError`` for which :func:`~corral.gateway._inline.expired` is true, or the
    ``Cancelled`` the kill-switch watch returned.

    Nothing is armed until the call first suspends. Then one timer handle looks at
    ``bound.watch`` every WATCH_SECONDS and, at the deadline or on a stop_all switch,
    cancels the caller's task: the cancellation reaches the call where it waits. A call
    still running after that cancellation (it caught it, or cleans up) is driven on in the
    caller's task for :data:`CANCEL_GRACE` seconds, then moved to a task of its own and
    abandoned (``bound.pending``). Any other cancellation (the caller's, or one the call
    makes of its own, as ``asyncio.timeout`` and anyio's cancel scopes do) is handed to the
    call; once the call ends, a cancellation of the caller still pending is raised.
    """
    it = _steps(call)
    run = bound.context.run
    try:
        yielded = run(it.send, None)
    except StopIteration as done:
        return done.value
    if not bound._start():  # pragma: no cover - not in a task: one of its own, as before
        task = bound._loop.create_task(_carry_on(it, yielded), context=bound.context)
        try:
            return (
                yield from bounded(
                    task, bound.deadline - bound._loop.time(), bound.watch
                ).__await__()
            )
        finally:
            bound.pending = abandoned(task)
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            if bound.reason is not None:  # cut by the bound, and it goes on
                yield from _graced(it, yielded, bound)
                break
            try:
                sent = yield yielded
            except GeneratorExit:
                it.close()
                raise
            except BaseException as exc:  # a cancellation, or what the task throws in
                step, arg = it.throw, exc
            else:
                step, arg = it.send, sent
            try:
                yielded = run(step, arg)
            except StopIteration as done:
                value = done.value
                break
    except GeneratorExit:
        bound._stop()
        raise
    except BaseException as exc:  # what the call raised (or the caller's cancellation)
        error = exc
    if bound._stop():  # the caller was cancelled meanwhile
        if isinstance(error, asyncio.CancelledError):
            raise error
        raise asyncio.CancelledError()
    if bound.reason is not None:
        raise bound.reason
    if error is not None:
        raise error
    return value


def _graced(it: Any, yielded: Any, bound: Bound) -> Generator[Any, Any, None]:
    """Drive ``it``, cancelled by ``bound`` and still running, in the caller's task until it
    ends or :data:`CANCEL_GRACE` seconds have passed; then move it to a task of its own,
    abandoned (``bound.pending``). Also at once when the caller is cancelled meanwhile."""
    loop, run = bound._loop, bound.context.run
    until = loop.time() + CANCEL_GRACE
    while True:
        if loop.time() >= until:
            _adopt(it, yielded, bound)
            return
        if isinstance(yielded, asyncio.Future) and yielded.get_loop() is loop:
            # Wait for what it waits for, or for the grace's end, whichever comes first.
            woken: asyncio.Future[None] = loop.create_future()
            wake = functools.partial(_wake, woken)
            yielded.add_done_callback(wake)
            timer = loop.call_at(until, wake)
            try:
                yield from woken  # as ``await woken``
            except GeneratorExit:  # the caller's coroutine is closed: so is the call
                it.close()
                raise
            except BaseException:  # the caller was cancelled meanwhile: abandoned now
                _adopt(it, yielded, bound)
                raise
            finally:
                timer.cancel()
                yielded.remove_done_callback(wake)
            if not yielded.done():
                continue  # the grace is over
            step, arg = it.send, None
        else:
            try:
                sent = yield yielded
            except GeneratorExit:
                it.close()
                raise
            except BaseException as exc:
                step, arg = it.throw, exc
            else:
                step, arg = it.send, sent
        try:
            yielded = run(step, arg)
        except StopIteration:
            return


def _wake(woken: asyncio.Future[None], *_: Any) -> None:
    if not woken.done():
        woken.set_result(None)


def _adopt(it: Any, yielded: Any, bound: Bound) -> None:
    """Move ``it`` (which has just yielded ``yielded``) to a task of its own, abandoned."""
    task = bound._loop.create_task(_carry_on(it, yielded), context=bound.context)
    ended: Future[None] = Future()
    _ABANDONED[task] = ended
    task.add_done_callback(lambda t: _ended(t, ended))
    bound.pending = ended


async def _carry_on(it: Any, yielded: Any) -> Any:
    """Go on driving ``it``, which has just yielded ``yielded``: the body of the task a call
    is moved into when it ignores its cancellation."""
    return await _resumed(it, yielded)


@types.coroutine
def _resumed(it: Any, yielded: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            it.close()
            raise
        except BaseException as exc:
            try:
                yielded = it.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                yielded = it.send(sent)
            except StopIteration as done:
                return done.value


def chained(thread: Future[Any]) -> asyncio.Future[Any]:
    """A future of the running loop that takes ``thread``'s outcome when it is done (a
    lighter ``asyncio.wrap_future``: one hop back to the loop, nothing chained back)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Any] = loop.create_future()

    def done(source: Future[Any]) -> None:  # in the worker thread
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_copy, source, waiter)

    thread.add_done_callback(done)
    return waiter


def _copy(source: Future[Any], waiter: asyncio.Future[Any]) -> None:
    if waiter.done():  # cancelled at its deadline
        return
    if source.cancelled():
        waiter.cancel()
        return
    error = source.exception()
    if error is None:
        waiter.set_result(source.result())
    elif isinstance(error, StopIteration):  # a future cannot hold one
        waiter.set_exception(RuntimeError(f"the call raised {error!r}"))
    else:
        waiter.set_exception(error)


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
