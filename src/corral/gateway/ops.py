"""What a governed flow asks its driver to do, and what it gets back.

The gateway's flows (a tool call, a model turn) are generators: they *yield* an
operation when something must be waited for — :class:`Execute` a tool,
:class:`CallModel`, :class:`Approve` (an in-process approver), :class:`Sleep` — and
receive the answer (an :class:`Attempt` for the first two). A driver
(:mod:`corral.gateway.drivers`) does the waiting, synchronously or asynchronously; the
flows never wait themselves. Nothing here imports the rest of corral: the fields that hold
corral's own objects are typed loosely so that any part can name these operations.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

#: A check made while an operation runs: a cancellation (a ``stop_all`` kill switch) or None.
Watch = Callable[[], Any]


# Execute and Attempt are built on every call: plain slotted dataclasses, since a frozen
# one's __init__ costs about three times as much (object.__setattr__ per field).
@dataclass(slots=True)
class Execute:
    """Run one attempt of a tool: ``eff`` (the tool as the run treats it), validated
    ``args``, its ``ctx`` (a ToolContext, when it takes one), within ``timeout`` seconds,
    under idempotency ``key``, looking at ``watch`` meanwhile."""

    eff: Any
    args: Mapping[str, Any]
    ctx: Any
    timeout: float
    key: str | None = None
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class CallModel:
    """Call ``model`` with ``request`` within ``timeout`` seconds, looking at ``watch``."""

    model: Any
    request: Any
    timeout: float
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class Approve:
    """Ask the run's in-process approver about ``request`` (an ApprovalRequest)."""

    request: Any


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` on the run's clock (a retry's backoff, a poll)."""

    seconds: float


@dataclass(slots=True)
class Attempt:
    """The result of one execution: a value, or an error (``timed_out`` for a deadline).

    ``pending``: an attempt abandoned at its deadline whose thread still runs.
    """

    ok: bool
    value: Any = None
    error: BaseException | None = None
    timed_out: bool = False
    seconds: float = 0.0
    pending: Future[Any] | None = None


Op = Execute | CallModel | Approve | Sleep
Flow = Generator[Op, Any, Any]
