"""Synchronous calls bounded in the caller's own thread by a timer signal.

On the main thread (with no other ``SIGALRM`` handler installed), a sync tool, a
sync model call or a sync approver is called inline under ``setitimer`` (a sync tool of
``corral.run``'s own event loop too: :func:`corral.gateway.drivers.execute_loop`): at its
deadline the signal handler raises inside the call, which unwinds it. No thread
hop, and nothing is left running. Elsewhere the drivers use worker threads
(:mod:`corral.gateway._workers`).

Kill switch. While such a call runs, a watcher thread looks at the kill switch
every :data:`~corral.gateway.guards.killswitch.WATCH_SECONDS` (the check reads the store,
which must not happen inside a signal handler: the call may be using the store)
and, when a ``stop_all`` switch comes to cover the call, signals the main thread,
whose handler raises inside the call as at a deadline.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # `signal` without its enum conversions
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from corral.gateway.guards.killswitch import WATCH_SECONDS, Cancelled
from corral.gateway.ops import Attempt

A = TypeVar("A")
Watch = Callable[[], Cancelled | None]


class _Deadline(BaseException):
    """Raised inside the call by the timer signal (a BaseException so calls don't swallow it)."""


class _Switched(BaseException):
    """Raised inside the call by the timer signal when a stop_all switch covers it."""

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
    """Watches the kill switch for the call running inline in the main thread.

    Arming costs the call two assignments; the thread retires after IDLE_SECONDS
    without calls.
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


def can_alarm() -> bool:
    """Whether a call made now can be bounded inline by the timer signal."""
    if not _HAS_ITIMER or threading.get_ident() != _MAIN_IDENT:
        return False
    if _armed:
        return False  # a call made from inside a bounded call: the outer timer stays in charge
    # The C-level lookup: ``signal.getsignal`` converts to an enum and costs ~5 us a call.
    handler = _signal.getsignal(_SIGALRM)
    if handler is _on_alarm:
        return True
    if handler in (signal.SIG_DFL, None):
        signal.signal(signal.SIGALRM, _on_alarm)
        return True
    return False


def busy() -> bool:
    """Whether a call runs inline under the timer signal now (in the main thread)."""
    return _armed


def timeout_error(what: str, timeout: float) -> TimeoutError:
    """The error of a call cut at its deadline (see :func:`expired`)."""
    error = TimeoutError(f"{what} gave no result within {timeout:.3g} s")
    error.corral_deadline = True  # type: ignore[attr-defined]
    return error


def expired(error: BaseException | None) -> bool:
    """Whether ``error`` is a deadline corral enforced, not a ``TimeoutError`` of the call's."""
    return getattr(error, "corral_deadline", False) is True


def run_inline(
    fn: Callable[[A], Any], arg: A, timeout: float, watch: Watch | None, what: str
) -> Attempt:
    """``fn(arg)`` in this (main) thread, interrupted at ``timeout`` seconds (a timed-out
    attempt) or when ``watch`` finds a stop_all switch (an attempt failed with
    :class:`Cancelled`). The caller checked :func:`can_alarm` and ``timeout > 0``."""
    global _armed, _deadline_at
    started = time.monotonic()
    try:
        try:
            _deadline_at = started + timeout
            _armed = True
            if watch is not None:
                _watcher.arm(watch, started)
            _signal.setitimer(_ITIMER_REAL, timeout)
            value = fn(arg)
        finally:
            _armed = False
            _watcher.disarm()
            _signal.setitimer(_ITIMER_REAL, 0)
    except _Switched as exc:
        # Also when the switch was found just as the call returned: it may have happened.
        return Attempt(False, error=exc.cancelled, seconds=time.monotonic() - started)
    except _Deadline:
        # Also when the timer fired between the call's return and the disarming above.
        return Attempt(
            False,
            error=timeout_error(what, timeout),
            timed_out=True,
            seconds=time.monotonic() - started,
        )
    except TimeoutError as exc:
        return Attempt(False, error=exc, timed_out=True, seconds=time.monotonic() - started)
    except Exception as exc:
        return Attempt(False, error=exc, seconds=time.monotonic() - started)
    return Attempt(True, value=value, seconds=time.monotonic() - started)
