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

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from corral._safe import error_text
from corral.budgets.meter import Charge, Usage
from corral.clock import Clock
from corral.exceptions import ConfigError, Stop, StoreError, ToolRejected
from corral.gateway._escapes import CANCELLATION, Escaped, run_async, run_sync
from corral.gateway.chain import call_flow
from corral.gateway.guards import killswitch
from corral.gateway.model_turn import input_token_bound, model_flow, plan
from corral.gateway.ops import Attempt, Execute
from corral.gateway.state import RunCore, status_of
from corral.loop.tickets import ModelCall, Ticket, _NamedModel, _report, _wait_async, _wait_sync
from corral.models.base import Model, ModelResponse
from corral.policy.schema import Policy
from corral.result import CallInfo, RunResult
from corral.secrets import SecretProvider
from corral.stops import StopInfo, StopReason, money
from corral.stores import Store, default_url, display_url, open_store
from corral.stores.unavailable import UnavailableStore
from corral.tools import Tool, as_registry, described_tool

log = logging.getLogger("corral")

SpecFormat = Literal["openai", "anthropic", "neutral"]
_FORMATS = ("openai", "anthropic", "neutral")


#: The longest idempotency key or call id accepted (they are stored and audited).
MAX_KEY_CHARS = 512


def _text_or_none(what: str, value: Any) -> str | None:
    """A caller's key or call id: text of a bounded length, or ``None`` (a developer
    mistake otherwise, not something to coerce)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__}")
    text: str = str.__str__(value)  # a str subclass is keyed by its text, nothing else
    if len(text) > MAX_KEY_CHARS:
        raise ConfigError(f"{what} must be at most {MAX_KEY_CHARS} characters, got {len(text)}")
    return text


def wire_name(name: str) -> str:
    """A tool name as OpenAI and Anthropic accept it (``[a-zA-Z0-9_-]``): dots become ``__``."""
    return name.replace(".", "__")


def _open(store: str | Store | None) -> Store:
    """The store a run names; one that cannot be opened becomes a stand-in that fails every
    call, so the run fails closed inside (``control_plane_unavailable``, saying why) rather
    than its constructor raising. A URL no store could ever mean stays a ConfigError."""
    try:
        return open_store(store)
    except ConfigError:
        raise
    except Exception as exc:
        where = display_url(store if isinstance(store, str) else default_url())
        why = str(exc) if isinstance(exc, StoreError) else error_text(exc)
        return cast(Store, UnavailableStore(f"cannot open the store {where}: {why}"))


def _registry(
    policy: Policy,
    tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None,
    *,
    described: bool,
) -> dict[str, Tool]:
    """The run's tools by name: those given, and (``described``) a tool for each allowed
    name that the policy alone describes (``tools.specs.<name>.args_schema``) and no code
    provides, for the caller to authorize, execute and report."""
    registry = as_registry(tools)
    if described:
        for name in policy.tools.allow:
            spec = policy.spec(name)
            if name not in registry and spec is not None and spec.args_schema is not None:
                registry[name] = described_tool(name, spec)
    return registry


#: Stops logged as warnings: governance could not work (the store), or the agent's own
#: code failed. Every other end is a bound or a decision working as meant (INFO).
_LOUD_STOPS = frozenset({"control_plane_unavailable", "agent_error"})


def _log_end(result: RunResult) -> None:
    """One line on the ``corral`` logger as a run ends (never per call)."""
    level = logging.WARNING if result.stop_reason in _LOUD_STOPS else logging.INFO
    if not log.isEnabledFor(level):
        return
    stop = result.stop
    if stop is None:
        what = "ended ok"
    else:
        what = f"stopped {stop}" + (f": {stop.message}" if stop.message else "")
    u = result.usage
    log.log(
        level,
        "run %s %s (%s, %s, $%s, %.2f s)",
        result.run_id,
        what,
        _count(u.steps, "step"),
        _count(u.tool_calls, "tool call"),
        money(u.usd),
        u.active_seconds,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class _RunBase:
    #: Whether the run registers the tools the policy alone describes (not in the bounded
    #: loop, which could only refuse them).
    _describes = True

    def __init__(
        self,
        policy: Policy,
        *,
        tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None = None,
        store: str | Store | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        run_id: str | None = None,
        task: str = "",
        clock: Clock | None = None,
        approver: Callable[..., Any] | None = None,
        credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a corral.Policy, got {type(policy).__name__}")
        self._core = RunCore(
            policy,
            tools=_registry(policy, tools, described=self._describes),
            store=_open(store),
            clock=clock,
            tenant=tenant,
            agent=agent,
            run_id=run_id,
            task=task,
            approver=approver,
            credentials=credentials,
        )
        self._result: RunResult | None = None
        self._wire: dict[str, str] = {}

    # -- identity and state ------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._core.id

    @property
    def usage(self) -> Usage:
        """What the run has used so far."""
        return self._core.usage()

    @property
    def last_call(self) -> CallInfo | None:
        """How the last tool call was served: executed, from the read cache, or replayed
        from an earlier outcome of the same idempotency key (nothing ran again)."""
        last = self._core.last_call
        if last is None:
            return None
        return CallInfo(outcome=last[0], tool=last[1], idempotency_key=last[2])

    @property
    def result(self) -> RunResult:
        """The result, once the run has ended (after the ``with`` block or ``finish``)."""
        if self._result is None:
            raise ConfigError("the run has not ended yet: leave the `with` block or call finish()")
        return self._result

    # -- steps, finish, cancel --------------------------------------------------------
    def _step(self) -> None:
        core = self._core
        core.ensure_running()
        core.check_time()
        hold = core.reserve(Charge(steps=1))
        core.settle(hold, Charge(steps=1))
        core.event("step", n=core.meter.usage().steps)

    def _finish(self, answer: Any) -> RunResult:
        if self._result is not None:
            return self._result
        self._core.ensure_running()
        text = None if answer is None else (answer if isinstance(answer, str) else str(answer))
        self._core.answer = text
        return self._end("ok", answer=text)

    def cancel(self) -> None:
        """Ask the run to stop: the next step or call raises ``cancelled``, and a run that
        ends without one ends ``cancelled``. Safe to call from another thread."""
        self._core.cancelled = True

    def _end(
        self, reason: StopReason, *, answer: str | None = None, error: str | None = None
    ) -> RunResult:
        core = self._core
        if self._result is not None:
            return self._result
        core.finished = True
        info = core.stop if reason != "ok" else None
        # The answer and the partial are the agent's text: scrubbed of the run's secrets
        # like a tool's output, for the caller and the stored run alike.
        answer, partial = core.scrub_text(answer), core.scrub_text(core.partial or core.last_text)
        if error is not None:
            error = core.redactor.text(error)
        unrecorded = core.close(reason, answer=answer)
        if unrecorded is not None:
            # Fail closed, and say so: a run whose end is not in the audit log did not end ok.
            error = unrecorded if error is None else f"{error}; {unrecorded}"
            if reason == "ok":
                reason, partial, answer = "control_plane_unavailable", answer, None
                info = StopInfo(reason=reason, detail="store", message=unrecorded, retryable=True)
                core.record_stop(info)
        self._result = RunResult(
            run_id=core.id,
            status=status_of(reason),
            stop_reason=reason,
            answer=answer,
            partial=None if reason == "ok" else partial,
            usage=core.usage(),
            stop=info,
            would_stop=tuple(core.would_stop),
            error=error,
        )
        _log_end(self._result)
        return self._result

    def _stopped(self, stop: Stop) -> RunResult:
        self._core.record_stop(stop.info)
        first = self._core.stop or stop.info  # the first stop of the run wins
        return self._end(first.reason)

    # -- tools on offer --------------------------------------------------------------
    def tool_specs(self, format: SpecFormat = "openai") -> list[dict[str, Any]]:
        """Specs of the tools on offer now: allowed, registered (tools described only by the
        policy included), not kill-switched or degraded.

        ``openai`` and ``anthropic`` formats use wire-safe names (dots become ``__``);
        map a name the model sends back with :meth:`tool_name`. Raises
        ``control_plane_unavailable`` when the kill switch or degrade state cannot be read.
        """
        if format not in _FORMATS:
            raise ConfigError(f"unknown tool spec format {format!r} (openai, anthropic, neutral)")
        core = self._core
        out: list[dict[str, Any]] = []
        for name in sorted(core.tools):
            if name not in core.allowed:
                continue
            eff = core.effective(name)
            if killswitch.blocking_switch(core, name, eff) is not None:
                continue
            if core.degraded(name):
                continue
            spec = eff.tool.spec()
            policy_spec = core.policy.spec(name)
            if policy_spec is not None and policy_spec.description is not None:
                spec["description"] = policy_spec.description  # the operator's words win
            if format == "neutral":
                out.append(spec)
                continue
            wire = wire_name(name)
            self._wire[wire] = name
            if format == "openai":
                function = {
                    "name": wire,
                    "description": spec["description"],
                    "parameters": spec["parameters"],
                }
                out.append({"type": "function", "function": function})
            else:
                out.append(
                    {
                        "name": wire,
                        "description": spec["description"],
                        "input_schema": spec["parameters"],
                    }
                )
        return out

    def tool_name(self, wire: str) -> str:
        """The tool name behind a wire name from :meth:`tool_specs` (others pass unchanged)."""
        return self._wire.get(wire, wire)

    # -- wrapped model calls ---------------------------------------------------------
    def model_call(
        self,
        *,
        model: str | Model,
        messages: Sequence[Mapping[str, Any]] = (),
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
        input_tokens: int | None = None,
        provider: str | None = None,
    ) -> ModelCall:
        """Reserve a model call of your own (a step): kill switch, tokens and USD, before it.

        The input bound is computed from ``messages`` and ``tools`` (or given as
        ``input_tokens``); the price comes from ``models.prices``, else from the
        model object's ``price``. ``provider`` (``openai``, ``anthropic``, ...) names the
        API for traces (``gen_ai.provider.name``) when ``model`` is a name. Use it as
        ``with run.model_call(...) as mc:`` (``async with`` in async code), send
        ``mc.max_tokens``, then ``mc.settle``.
        """
        core = self._core
        core.ensure_running()
        core.check_time()
        killswitch.check(core, None, None)
        target = _NamedModel(model, None, provider) if isinstance(model, str) else model
        bound = input_tokens if input_tokens is not None else input_token_bound(messages, tools)
        clamped, charge = plan(core, target, bound, max_tokens)
        hold = core.reserve(charge)
        return ModelCall(core, hold, clamped, target)

    # -- exit semantics --------------------------------------------------------------
    def _exit(self, exc: BaseException | None) -> bool:
        core = self._core
        if self._result is not None:
            return False  # already ended (finish): whatever happened after is the caller's
        if exc is None:
            if core.stop is not None:
                self._end(core.stop.reason)
            elif core.cancelled:
                self._stopped(Stop("cancelled", "run", message="the run was cancelled"))
            else:
                self._end("ok", answer=core.answer)
            return False
        if isinstance(exc, Stop):
            owner = exc.run_id
            if owner in (None, core.id):
                self._stopped(exc)
                return True
            self._fail_agent(exc)
            return False
        if isinstance(exc, ToolRejected):
            # The shape of the gateway's own stops (stops.StopInfo): detail names the tool,
            # extra["why"] the check that refused.
            extra = {"why": exc.detail} if exc.detail else None
            self._stopped(
                Stop(exc.reason, exc.tool, tool=exc.tool, message=exc.message, extra=extra)
            )
            return True
        if isinstance(exc, CANCELLATION):
            self._stopped(Stop("cancelled", "run", message=type(exc).__name__))
            return False
        self._fail_agent(exc)
        return False

    def _fail_agent(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        info = StopInfo(reason="agent_error", detail=type(exc).__name__, message=str(exc))
        self._core.record_stop(info)
        first = self._core.stop or info  # a stop raised before the exception still wins
        self._end(first.reason, error=text)


class Run(_RunBase):
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
        flow = call_flow(
            self._core,
            name,
            {} if args is None else args,
            key=_text_or_none("idempotency_key", idempotency_key),
            call_id=_text_or_none("call_id", call_id),
        )
        return run_sync(flow, approver=self._core.approver, clock=self._core.clock)

    def authorize(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Ticket:
        """Pass the gateway up to execution (approval included); execute the tool yourself
        with the :class:`Ticket`'s arguments, then :meth:`report` or :meth:`report_failure`.

        >>> import corral
        >>> policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"], "specs": {
        ...     "kb.read": {"effect": "read", "args_schema": {"type": "object"}}}}})
        >>> with corral.Run(policy, store="memory://") as run:  # kb.read: no function here
        ...     ticket = run.authorize("kb.read", {"q": "vendor"})
        ...     run.report(ticket, "<b>up</b>")
        'up'
        """
        core = self._core
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=_text_or_none("idempotency_key", idempotency_key),
            call_id=_text_or_none("call_id", call_id),
            external=True,
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
        return _report(ticket, Attempt(True, value=output))

    def report_failure(
        self, ticket: Ticket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out (charged as an attempt; ends the run
        with ``tool_error``)."""
        return _report(ticket, Attempt(False, error=error, timed_out=timed_out))

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


class AsyncRun(_RunBase):
    """A governed run for async code: the same methods as :class:`Run`, awaited.

    ``cancel``, ``tool_specs``, ``tool_name`` and ``model_call`` (an ``async with``
    block) are not coroutines.
    """

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
        flow = call_flow(
            self._core,
            name,
            {} if args is None else args,
            key=_text_or_none("idempotency_key", idempotency_key),
            call_id=_text_or_none("call_id", call_id),
        )
        return await run_async(flow, approver=self._core.approver, clock=self._core.clock)

    async def authorize(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Ticket:
        """Pass the gateway up to execution; see :meth:`Run.authorize`."""
        core = self._core
        flow = call_flow(
            core,
            name,
            {} if args is None else args,
            key=_text_or_none("idempotency_key", idempotency_key),
            call_id=_text_or_none("call_id", call_id),
            external=True,
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
        return _report(ticket, Attempt(True, value=output))

    async def report_failure(
        self, ticket: Ticket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out; see :meth:`Run.report_failure`."""
        return _report(ticket, Attempt(False, error=error, timed_out=timed_out))

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
        flow = model_flow(self._core, model, messages, specs, max_tokens=max_tokens)
        result: ModelResponse = await run_async(
            flow, approver=self._core.approver, clock=self._core.clock
        )
        return result
