"""``Run`` and ``AsyncRun``: govern a loop you already have.

>>> import corral
>>> @corral.tool(name="search.read", effect="read")
... def search(query: str) -> str:
...     return "vendor is up"
>>> policy = corral.Policy.from_dict({"tools": {"allow": ["search.read"]}})
>>> with corral.Run(policy, tools=[search], store="memory://") as run:
...     run.step()
...     obs = run.call("search.read", {"query": "vendor status"})
...     _ = run.finish(obs)
>>> run.result.status, run.result.answer, run.result.usage.tool_calls
('ok', 'vendor is up', 1)

A :class:`~corral.Stop` ends the run: once one was raised for a run, every later
step or call raises it again, and the run's result carries it even if the code
caught it. Leaving the ``with`` block: a ``Stop`` of this run is recorded and
suppressed (``run.result`` says why); a :class:`~corral.ToolRejected` the code did
not handle stops the run with its reason; cancellation (``KeyboardInterrupt``,
``SystemExit``, ``asyncio.CancelledError``) is ``cancelled`` and re-raised; any other
exception is recorded as ``agent_error`` and re-raised.

Failing closed, inside the run: a store that cannot be opened, read or written (whatever
it raises) stops the run with ``control_plane_unavailable`` at its first governed
action, and the constructor does not raise for it (a URL no store could mean is a
:class:`~corral.ConfigError`). A tool or model raising a ``BaseException`` of its own
ends its call as a failure (``tool_error``, ``model_error``), see :mod:`corral.gateway._escapes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.exceptions import ConfigError
from corral.gateway import direct, direct_async
from corral.gateway._escapes import CANCELLATION, Escaped, run_async, run_sync
from corral.gateway.chain import call_flow
from corral.gateway.model_turn import model_flow
from corral.gateway.ops import Attempt, Execute
from corral.gateway.state import RunState
from corral.loop.base import RunBase, text_or_none
from corral.loop.tickets import Ticket, _report, _wait_async, _wait_sync
from corral.models.base import Model, ModelResponse
from corral.result import RunResult


class Run(RunBase):
    """A governed run for synchronous code. See the module docstring."""

    def __enter__(self) -> Run:
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        return self._exit(exc)

    def step(self) -> None:
        """Count one step of your loop; raises :class:`Stop` when steps or time are used up."""
        self._step()

    def finish(self, answer: Any = None) -> RunResult:
        """End the run with ``ok`` and ``answer`` (raises the run's :class:`Stop` if it has one)."""
        return self._finish(answer)

    def call(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Call a tool through the gateway; returns the cleaned observation.

        A write is keyed by ``idempotency_key`` if given, else by the fields its tool
        declares, else by ``call_id`` — the identity of this call in your loop (the
        model's tool-call id): a call with a new ``call_id`` is a new write, while the
        same ``call_id`` and arguments again (a resumed run) replay the stored outcome —
        else by the run, the tool and the arguments (so an identical write in the same
        run is replayed, not run twice). :attr:`last_call` says whether a call was
        replayed. Raises :class:`Stop` when the run must stop, :class:`ToolRejected`
        when the call was refused but the run may go on (show ``.message`` to the model),
        and :class:`ConfigError` for a tool described only by the policy (nothing here
        can execute it: :meth:`authorize` it and :meth:`report` its outcome).
        """
        core = self._core
        if type(name) is str and idempotency_key is None and call_id is None:
            plan = direct.plan_for(core, name)
            if plan is not None:  # a plain read: the chain called directly
                return direct.call(plan, {} if args is None else args)
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=text_or_none("idempotency_key", idempotency_key),
            call_id=text_or_none("call_id", call_id),
        )
        return run_sync(flow, approver=core.approver, clock=core.clock)

    def authorize(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Ticket:
        """Pass the gateway up to execution (approval included); execute the tool yourself
        with the :class:`Ticket`'s arguments, then :meth:`report` or :meth:`report_failure`.
        ``attributes`` (namespaced text, ``{"mcp.server": "git"}``) go on the call's events
        and its ``execute_tool`` span.

        >>> import corral
        >>> policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"], "specs": {
        ...     "kb.read": {"effect": "read", "args_schema": {"type": "object"}}}}})
        >>> with corral.Run(policy, store="memory://") as run:  # kb.read: no function here
        ...     ticket = run.authorize("kb.read", {"q": "vendor"})
        ...     run.report(ticket, "<b>up</b>")
        'up'
        """
        core = self._core
        ticket = _direct_ticket(core, name, args, idempotency_key, call_id, attributes)
        if ticket is not None:
            return ticket
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=text_or_none("idempotency_key", idempotency_key),
            call_id=text_or_none("call_id", call_id),
            external=True,
            attributes=_attributes(attributes),
        )
        try:
            op = next(flow)
            while not isinstance(op, Execute):
                try:
                    answer = _wait_sync(core, op)
                except CANCELLATION:
                    raise
                except BaseException as exc:  # a failing approval channel: the gateway fails closed
                    op = flow.throw(exc if isinstance(exc, Exception) else Escaped(exc))
                else:
                    op = flow.send(answer)
        except StopIteration as done:
            return Ticket(None, None, output=done.value)
        return Ticket(flow, op)

    def report(self, ticket: Ticket, output: Any) -> Any:
        """Report what the tool returned; returns the observation (validated and cleaned)."""
        return _report(self._core, ticket, Attempt(True, value=output))

    def report_failure(
        self, ticket: Ticket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out (charged as an attempt; ends the run
        with ``tool_error``)."""
        return _report(self._core, ticket, Attempt(False, error=error, timed_out=timed_out))

    def model_turn(
        self,
        model: Model,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> ModelResponse:
        """One governed turn of a :class:`~corral.Model` (a step)."""
        specs = self.tool_specs("neutral") if tools is None else tools
        flow = model_flow(self._core, model, messages, specs, max_tokens=max_tokens)
        result: ModelResponse = run_sync(flow, approver=self._core.approver, clock=self._core.clock)
        return result


class AsyncRun(RunBase):
    """A governed run for async code: the same methods as :class:`Run`, awaited.

    ``cancel``, ``tool_specs``, ``tool_name`` and ``model_call`` (an ``async with``
    block) are not coroutines.
    """

    _remote_async = True  # with server=, corral.client.AsyncRun
    #: Whether the run's event loop is corral's own (``corral.run``'s), which a sync tool
    #: may hold while it runs inline (see :func:`corral.gateway.drivers.execute_loop`);
    #: never a caller's loop.
    _owns_loop = False

    async def __aenter__(self) -> AsyncRun:
        return self

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        return self._exit(exc)

    async def step(self) -> None:
        """Count one step of your loop; raises :class:`Stop` when steps or time are used up."""
        self._step()

    async def finish(self, answer: Any = None) -> RunResult:
        """End the run with ``ok`` and ``answer`` (raises the run's :class:`Stop` if it has one)."""
        return self._finish(answer)

    async def call(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Call a tool through the gateway; see :meth:`Run.call`."""
        core = self._core
        if type(name) is str and idempotency_key is None:
            plan = direct_async.plan_for(self._plans, core, name)
            if plan is not None:  # a plain read: the chain called directly
                checked = text_or_none("call_id", call_id)
                args = {} if args is None else args
                return await direct_async.call(plan, args, checked, self._owns_loop)
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=text_or_none("idempotency_key", idempotency_key),
            call_id=text_or_none("call_id", call_id),
        )
        return await run_async(
            flow, approver=core.approver, clock=core.clock, owned=self._owns_loop
        )

    async def authorize(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> Ticket:
        """Pass the gateway up to execution; see :meth:`Run.authorize`."""
        core = self._core
        ticket = _direct_ticket(core, name, args, idempotency_key, call_id, attributes)
        if ticket is not None:
            return ticket
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=text_or_none("idempotency_key", idempotency_key),
            call_id=text_or_none("call_id", call_id),
            external=True,
            attributes=_attributes(attributes),
        )
        try:
            op = next(flow)
            while not isinstance(op, Execute):
                try:
                    answer = await _wait_async(core, op)
                except CANCELLATION:
                    raise
                except BaseException as exc:  # a failing approval channel: the gateway fails closed
                    op = flow.throw(exc if isinstance(exc, Exception) else Escaped(exc))
                else:
                    op = flow.send(answer)
        except StopIteration as done:
            return Ticket(None, None, output=done.value)
        return Ticket(flow, op)

    async def report(self, ticket: Ticket, output: Any) -> Any:
        """Report what the tool returned; see :meth:`Run.report`."""
        return _report(self._core, ticket, Attempt(True, value=output))

    async def report_failure(
        self, ticket: Ticket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out; see :meth:`Run.report_failure`."""
        return _report(self._core, ticket, Attempt(False, error=error, timed_out=timed_out))

    async def model_turn(
        self,
        model: Model,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
    ) -> ModelResponse:
        """One governed turn of a :class:`~corral.Model` (a step)."""
        specs = self.tool_specs("neutral") if tools is None else tools
        return await self._model_turn(model, messages, specs, max_tokens, None)

    async def _model_turn(
        self,
        model: Model,
        messages: Sequence[Mapping[str, Any]],
        specs: Sequence[Mapping[str, Any]],
        max_tokens: int | None,
        input_bound: int | None,
    ) -> ModelResponse:
        return await direct_async.model_turn(
            self._core, model, messages, specs, max_tokens, input_bound
        )


def _direct_ticket(
    core: RunState,
    name: Any,
    args: Any,
    idempotency_key: str | None,
    call_id: str | None,
    attributes: Mapping[str, str] | None,
) -> Ticket | None:
    """The ticket of a plain read authorized on the direct path (``gateway/direct.py``);
    ``None`` when the call takes the flow."""
    if type(name) is not str or idempotency_key is not None:
        return None
    plan = direct.external_plan(core, name)
    if plan is None:
        return None
    checked, shown = text_or_none("call_id", call_id), _attributes(attributes)
    op, pending = direct.authorize(plan, {} if args is None else args, checked, shown)
    return Ticket(None, None, output=pending) if op is None else Ticket(pending, op)


def _attributes(given: Mapping[str, str] | None) -> dict[str, str] | None:
    """A caller's span attributes: namespaced names (``mcp.server``, not ``gen_ai.*`` or
    ``corral.*``, which are corral's own) to text of a bounded length."""
    if not given:
        return None
    if not isinstance(given, Mapping):
        raise ConfigError(f"attributes must be a mapping, got {type(given).__name__}")
    out: dict[str, str] = {}
    for name, value in given.items():
        if not isinstance(name, str) or "." not in name or name.startswith(("gen_ai.", "corral.")):
            raise ConfigError(
                f"attribute names are namespaced (mcp.server) and not gen_ai.* or corral.*: "
                f"{name!r}"
            )
        text = text_or_none(f"attribute {name}", value)
        if text is not None:
            out[name] = text
    return out or None
