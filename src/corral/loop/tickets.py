"""Work the caller does itself under corral's bounds: a tool call it executes
(:class:`Ticket`, from ``run.authorize``) and a model call it makes (:class:`ModelCall`,
from ``run.model_call``). Each is reserved before and settled after, like corral's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Generator, Mapping
from typing import Any

from corral.budgets.meter import Charge, Hold
from corral.clock import SystemClock
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway.direct import Pending
from corral.gateway.model_turn import ONE_STEP, invalid_usage, price_of
from corral.gateway.ops import Approve, Attempt, Execute, Sleep
from corral.gateway.state import RunState
from corral.models.base import InvalidUsage, genai_provider, usage_problem
from corral.tools import ToolContext


class Ticket:
    """An authorized tool call that the caller executes itself, then reports with
    :meth:`Run.report` or :meth:`Run.report_failure`. When ``replayed`` is true the
    call was served from the cache or an idempotent replay: do not execute it, use
    ``output``."""

    def __init__(self, flow: Any, op: Execute | None, output: Any = None) -> None:
        self._flow = flow
        self._op = op
        self.replayed = op is None
        self.output = output
        self.reported = False

    @property
    def tool(self) -> str:
        return self._op.eff.tool.name if self._op else ""

    @property
    def arguments(self) -> Mapping[str, Any]:
        """The validated arguments to execute with."""
        return dict(self._op.args) if self._op else {}

    @property
    def idempotency_key(self) -> str | None:
        return self._op.key if self._op else None

    @property
    def context(self) -> ToolContext | None:
        """The call's context (idempotency key, attempt, deadline, the tool's credentials),
        for a tool that takes one or is described only by the policy; else ``None``."""
        return self._op.ctx if self._op else None

    @property
    def timeout(self) -> float:
        """Seconds the call may take (clamped to the time the run has left)."""
        return self._op.timeout if self._op else 0.0

    def killed(self) -> BaseException | None:
        """Look, while the call runs, whether a ``stop_all`` kill switch now covers it:
        the failure to report (``run.report_failure(ticket, failure)``: the run stops with
        ``kill_switch``, the call charged as cancelled in flight) once one does, else None.
        Reads the switches through the process's cache: cheap enough to ask every 100 ms."""
        watch = self._op.watch if self._op else None
        return None if watch is None else watch()


class ModelCall:
    """A model call of the caller's own, reserved before and settled after.

    Use ``max_tokens`` (clamped to what the budgets allow) in the request, then
    :meth:`settle` with the reported usage. Leaving the block without settling
    charges the reserved worst case; an exception inside it is ``model_error``
    (an :class:`~corral.models.InvalidUsage` charges the worst case too).
    """

    def __init__(self, core: RunState, hold: Hold, max_tokens: int, model: Any) -> None:
        self._core = core
        self._hold: Hold | None = hold
        self.max_tokens = max_tokens
        self._model = model
        provider = genai_provider(model)
        self._provider = {"provider": provider} if provider else {}

    @property
    def _name(self) -> str:
        return str(getattr(self._model, "name", "model"))

    def settle(self, *, input_tokens: int, output_tokens: int) -> None:
        """Charge what the provider reported (recorded as it is, also above the reservation).

        Counts that cannot be right (not whole numbers from 0 to
        :data:`~corral.models.base.MAX_CALL_TOKENS`) are never charged: the
        reservation is, and the run stops with ``model_error`` (why
        ``invalid_usage``), raised here as :class:`~corral.Stop`.
        """
        if self._hold is None:
            raise ConfigError("this model call was already settled")
        problem = usage_problem(input_tokens, output_tokens)
        if problem is not None:
            hold, self._hold = self._hold, None
            raise invalid_usage(self._core, hold, self._name, problem)
        price = price_of(self._core, self._model, input_tokens=input_tokens)
        usd = price.cost(input_tokens, output_tokens) if price else self._hold.charge.usd
        actual = Charge(steps=1, input_tokens=input_tokens, output_tokens=output_tokens, usd=usd)
        self._core.budget.settle(self._hold, actual)
        self._hold = None
        self._core.events.add(
            "model_call",
            model=self._name,
            outcome="ok",
            **self._provider,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usd=str(usd),
            max_tokens=self.max_tokens,
        )
        self._core.events.flush()

    def _exit(self, exc: BaseException | None) -> None:
        hold, self._hold = self._hold, None
        if hold is None:
            return
        if exc is None:
            # Not settled: the provider's figures are unknown, so the worst case is charged.
            self._core.budget.settle(hold, hold.charge)
            self._core.events.add(
                "model_call",
                model=self._name,
                outcome="unsettled",
                input_tokens=hold.charge.input_tokens,
                output_tokens=hold.charge.output_tokens,
                usd=str(hold.charge.usd),
            )
            return
        if isinstance(exc, InvalidUsage):  # from settle_from_response: usage that cannot be right
            raise invalid_usage(self._core, hold, self._name, str(exc)) from exc
        self._core.budget.settle(hold, ONE_STEP)
        if isinstance(exc, Exception) and not isinstance(exc, Stop | ToolRejected):
            self._core.events.add("model_call", model=self._name, outcome="error", error=repr(exc))
            raise self._core.stamp(
                Stop("model_error", self._name, message=f"{type(exc).__name__}: {exc}")
            ) from exc

    def __enter__(self) -> ModelCall:
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        self._exit(exc)

    async def __aenter__(self) -> ModelCall:
        return self

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        self._exit(exc)


class _NamedModel:
    def __init__(self, name: str, price: Any, provider: str | None = None) -> None:
        self.name = name
        self.price = price
        self.genai_provider = provider


def _wait_sync(core: RunState, op: Any) -> Any:
    """Answer what an authorize flow waits for before execution (approval, pause)."""
    if isinstance(op, Approve):
        answer = core.approver(op.request) if core.approver else False
        if inspect.isawaitable(answer):
            with contextlib.suppress(AttributeError):
                answer.close()  # type: ignore[attr-defined]
            raise ConfigError("the approver is async: use AsyncRun.authorize, or a sync approver")
        return answer
    if isinstance(op, Sleep):
        core.clock.sleep(op.seconds)
    return None


async def _wait_async(core: RunState, op: Any) -> Any:
    if isinstance(op, Approve):
        answer = core.approver(op.request) if core.approver else False
        return await answer if inspect.isawaitable(answer) else answer
    if isinstance(op, Sleep):
        if isinstance(core.clock, SystemClock):
            await asyncio.sleep(op.seconds)
        else:
            core.clock.sleep(op.seconds)
    return None


def _report(core: RunState, ticket: Ticket, attempt: Attempt) -> Any:
    if ticket.replayed:
        return ticket.output
    if ticket.reported:
        raise ConfigError("this ticket was already reported")
    if core.finished:
        raise ConfigError(
            "the run has ended: a ticket cannot be reported after it (what it held was "
            "counted when the run ended)"
        )
    ticket.reported = True
    if type(ticket._flow) is Pending:  # authorized on the direct path
        return ticket._flow.end(attempt)
    flow: Generator[Any, Any, Any] = ticket._flow
    try:
        flow.send(attempt)
    except StopIteration as done:
        return done.value
    with contextlib.suppress(Exception):
        flow.close()
    raise ConfigError("the gateway asked for another attempt of a caller-executed tool")
