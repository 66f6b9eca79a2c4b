"""What a tool, a model or an approver raises that is not an ``Exception``.

The drivers (``gateway/drivers.py``) catch ``Exception``: a failure of what they wait for is
handed to the flow as a failed attempt. A hostile dependency may raise a
``BaseException`` subclass of its own instead; that would escape the run with no stop
reason. Here it is caught around the driver and handed back to the flow, which is still
waiting for its answer, as the failure it is (:class:`Escaped`): a tool call ends
``tool_error``, a model turn ``model_error``, an approval is refused. The ways of
stopping a process or a task (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``,
``asyncio.CancelledError``) are never caught: they end the run ``cancelled``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Generator
from typing import Any, cast

from corral._safe import error_text
from corral.gateway.drivers import drive_async, drive_sync
from corral.gateway.ops import Attempt

#: The ways of stopping: re-raised, never handed to a flow.
CANCELLATION = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)

Flow = Generator[Any, Any, Any]


class Escaped(Exception):
    """A ``BaseException`` a tool, model or approver raised, carried as a plain failure
    (``original`` is what was raised)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(f"{error_text(original)} (a BaseException, not an Exception)")
        self.original = original


def run_sync(flow: Flow, *, approver: Any, clock: Any) -> Any:
    """:func:`~corral.gateway.drivers.drive_sync`, with escapes handed back to ``flow``."""
    driven = flow
    while True:
        try:
            return drive_sync(driven, approver=approver, clock=clock)
        except BaseException as exc:
            driven = _resume(flow, exc)


async def run_async(flow: Flow, *, approver: Any, clock: Any, owned: bool = False) -> Any:
    """:func:`~corral.gateway.drivers.drive_async`, with escapes handed back to ``flow``."""
    driven = flow
    while True:
        try:
            return await drive_async(driven, approver=approver, clock=clock, owned=owned)
        except BaseException as exc:
            driven = _resume(flow, exc)


def _resume(flow: Flow, exc: BaseException) -> Flow:
    """``flow`` resumed with the failure ``exc`` stands for; re-raise what is not an escape
    (an ``Exception`` came from the flow itself, and a flow that ended has nobody to tell)."""
    if isinstance(exc, (Exception, *CANCELLATION)):
        raise exc
    if inspect.getgeneratorstate(flow) != inspect.GEN_SUSPENDED:
        raise exc
    return cast(Flow, _Resumed(flow, Attempt(False, error=Escaped(exc))))


class _Resumed:
    """``flow`` as a driver sees it, its first step answering the op it waits on with
    ``answer`` (an Attempt; as an approval's answer it is a refusal, for a pause it is
    ignored); later steps forwarded."""

    def __init__(self, flow: Flow, answer: Attempt) -> None:
        self._flow = flow
        self._answer: Attempt | None = answer

    def __iter__(self) -> _Resumed:
        return self

    def __next__(self) -> Any:
        answer, self._answer = self._answer, None
        if answer is not None:
            return self._flow.send(answer)
        return next(self._flow)

    def send(self, value: Any) -> Any:
        return self._flow.send(value)

    def throw(self, exc: BaseException) -> Any:
        return self._flow.throw(exc)

    def close(self) -> None:
        self._flow.close()
