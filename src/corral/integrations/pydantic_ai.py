"""Pydantic AI agents under corral: one capability, ``Corral``.

>>> from pydantic_ai import Agent                                   # doctest: +SKIP
>>> from corral.integrations.pydantic_ai import Corral               # doctest: +SKIP
>>> agent = Agent(model, tools=[...], capabilities=[Corral(policy)])  # doctest: +SKIP

Each agent run is a corral run, opened when the run first lists its tools and ended with
the agent run. The guards map onto the capability's hooks:

- ``prepare_tools``: the model is offered only what the policy allows now (allowed,
  not kill-switched, not degraded); what it leaves out the framework cannot execute.
- ``before_tool_execute``: ``run.authorize`` — the whole gateway up to execution
  (arguments and constraints, loop detection, approval of writes, budgets, the durable
  idempotency claim). A call served from the read cache or an idempotent replay is not
  executed (``SkipToolExecution``); a denial the model may hear is the framework's own
  ``ToolDenied`` (a refusal it can fix, ``ToolFailed``), never a retry loop.
- ``wrap_tool_execute``: the call's deadline (clamped to what the run has left) and the
  kill switch, looked at every 100 ms while the tool runs.
- ``after_tool_execute`` / ``on_tool_execute_error``: ``run.report`` (the model sees the
  cleaned observation) and ``run.report_failure``.
- ``get_wrapper_model``: each model request is reserved (kill switch, steps, tokens, USD,
  ``max_tokens`` clamped to what the budgets leave) and settled from the usage the model
  reports. corral's USD budget replaces ``UsageLimits.cost_limit``: a model with no known
  price is refused under a USD limit rather than priced at nothing.
- A stop (budget, kill switch, deadline, denial...) ends the agent run with
  :class:`RunStopped`, an ``AgentRunError`` that is also the run's :class:`corral.Stop`.

The authorize and report steps are ``@durable_operation``\\ s (``corral.authorize``,
``corral.report``, ``corral.report_failure``): under a durable engine a replayed run gets
their recorded results back and never charges or audits a call twice; a model request
is already a durable unit, and the wrapper model that reserves it runs inside it.

Without capabilities (or with a run you open yourself), :class:`CorralToolset` and
:class:`CorralModel` wrap the agent's toolset and model around an ``AsyncRun``.

Imports ``corral.loop`` and what is below it; ``pydantic_ai`` is imported here only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

try:
    from pydantic_ai.capabilities import AbstractCapability
    from pydantic_ai.exceptions import (
        AgentRunError,
        ModelRetry,
        SkipToolExecution,
        ToolFailed,
    )
    from pydantic_ai.messages import ModelMessage, ModelResponse, ToolCallPart
    from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
    from pydantic_ai.models.wrapper import WrapperModel
    from pydantic_ai.settings import ModelSettings
    from pydantic_ai.tools import RunContext, ToolDefinition, ToolDenied
    from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
    from pydantic_ai.toolsets.abstract import ToolsetTool
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "corral.integrations.pydantic_ai needs Pydantic AI: pip install 'corral[pydantic-ai]'"
    ) from exc

try:  # pydantic-ai-slim >= 2.7x
    from pydantic_ai.capabilities import durable_operation
    from pydantic_ai.durable_exec._capability_operation import (
        durable_operation_dispatch as _dispatch,
    )
except ImportError:  # pragma: no cover - older versions run every hook inline

    def durable_operation(name: str) -> Callable[[Any], Any]:  # type: ignore[no-redef]
        return lambda method: method

    def _dispatch(ctx: Any, capability_id: str | None, name: str) -> Any:  # type: ignore[misc]
        return None


import anyio
import pydantic_core

from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.loop.run import AsyncRun
from corral.loop.tickets import Ticket
from corral.models.base import PER_MESSAGE_OVERHEAD
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.secrets import SecretProvider
from corral.stores import Store
from corral.tools import Tool, executed_elsewhere

__all__ = ["Corral", "CorralModel", "CorralToolset", "RunStopped"]

#: How often a running tool looks at the kill switch (the switch itself is cached ≤ 1 s).
WATCH_SECONDS = 0.1


class RunStopped(AgentRunError, Stop):
    """The agent run was stopped by corral: an ``AgentRunError`` (the framework's way to
    end a run) that is also the run's :class:`corral.Stop`.

    ``stop`` is corral's stop (``reason``, ``detail``, ``retryable``, ...; also readable
    on this exception), ``result`` the corral run's result once the run has ended
    (``None`` while it has not, or when you own the run: read ``run.result`` then).
    """

    def __init__(self, stop: Stop) -> None:
        text = str(stop) + (f": {stop.info.message}" if stop.info.message else "")
        AgentRunError.__init__(self, text)
        self.info = stop.info
        self.run_id = stop.run_id
        self.stop = stop
        self.result: RunResult | None = None

    @property  # AgentRunError's field: the whole text (``stop.message`` is corral's own)
    def message(self) -> str:  # type: ignore[override]
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        self.args = (value,)

    def __str__(self) -> str:
        return self.message


def _stopped(stop: Stop) -> RunStopped:
    return stop if isinstance(stop, RunStopped) else RunStopped(stop)


# -- what a call's verdict looks like across a durable boundary -------------------------


@dataclass
class Verdict:
    """What ``run.authorize`` decided for one call, in a form a durable engine can record.

    ``execute``: run the tool with ``arguments``; ``replayed``: do not, ``output`` is the
    observation; ``denied`` / ``failed``: tell the model ``message`` (the framework's own
    denial, or a failed call); ``stopped``: the run is over (``stop``, a
    :meth:`corral.stops.StopInfo.to_dict`).
    """

    kind: Literal["execute", "replayed", "denied", "failed", "stopped"]
    arguments: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    message: str = ""
    stop: dict[str, Any] | None = None


@dataclass
class Report:
    """What ``run.report`` made of a tool's output (the observation), or the stop it raised."""

    observation: Any = None
    stop: dict[str, Any] | None = None


def _stop_of(data: Mapping[str, Any]) -> Stop:
    from corral.stops import StopInfo

    info = StopInfo(**{k: v for k, v in data.items() if k in StopInfo.__dataclass_fields__})
    return Stop.from_info(info)


def _info_of(stop: Stop) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(stop.info)


# -- the run behind an agent run ---------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A tool's output as corral can check and clean it (JSON values; anything else as
    Pydantic serializes it, else its text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return pydantic_core.to_jsonable_python(value)
    except Exception:
        return str(value)


def _text_bytes(value: Any) -> int:
    """The UTF-8 bytes of a part's text, or of its value as JSON (as text when it is not)."""
    if isinstance(value, str):
        return len(value.encode())
    if value is None:
        return 0
    try:
        return len(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return len(str(value).encode())


def _message_bytes(message: ModelMessage) -> int:
    """What one message can weigh in tokens: the bytes of each part's text, arguments and
    tool name (no tokenizer makes more tokens than bytes), plus an overhead per part.
    Files and images count their whole ``repr``, their data included: a generous bound."""
    size = 0
    for part in message.parts:
        size += PER_MESSAGE_OVERHEAD
        for name in ("content", "args", "tool_name"):
            value = getattr(part, name, None)
            if value is not None:
                size += _text_bytes(value)
    return size


class _InputBound:
    """An upper bound of a request's input tokens, for the history of one run: each message
    is measured once (the history only grows), each tool definition once."""

    def __init__(self) -> None:
        self._sizes: dict[int, tuple[Any, int]] = {}  # id -> (the object, kept alive; size)

    def _size(self, item: Any, measure: Callable[[Any], int]) -> int:
        known = self._sizes.get(id(item))
        if known is not None and known[0] is item:
            return known[1]
        size = measure(item)
        self._sizes[id(item)] = (item, size)
        return size

    def __call__(self, messages: Sequence[ModelMessage], params: ModelRequestParameters) -> int:
        tools = [*params.function_tools, *params.output_tools]
        size = sum(self._size(m, _message_bytes) for m in messages)
        size += sum(self._size(t, _tool_bytes) for t in tools)
        for part in params.instruction_parts or ():
            size += _text_bytes(getattr(part, "content", ""))
        return size + PER_MESSAGE_OVERHEAD * (len(messages) + len(tools)) + 16


def _tool_bytes(tool: ToolDefinition) -> int:
    return (
        len(tool.name)
        + _text_bytes(tool.description or "")
        + _text_bytes(tool.parameters_json_schema)
    )


class Governor:
    """The corral run of one agent run: its tickets, its tool names, its end.

    Built by :class:`Corral` for each agent run, or around a run you opened yourself
    (:class:`CorralToolset`, :class:`CorralModel`).
    """

    def __init__(
        self,
        policy: Policy,
        run: AsyncRun | None = None,
        *,
        opener: Callable[[list[Tool]], AsyncRun] | None = None,
        declared: Mapping[str, Tool] | None = None,
    ) -> None:
        self.policy = policy
        self.run = run
        self._opener = opener
        self._declared = dict(declared or {})
        self.tickets: dict[str, Ticket] = {}
        self.names: dict[str, str] = {}  # the framework's tool name -> corral's
        self.owned = run is None
        self._bound = _InputBound()
        # The calls running now: call id -> (their cancel scope, when they started, why
        # they were ended), and the one task per run that watches them.
        self._running: dict[str, tuple[anyio.CancelScope, float, list[Any]]] = {}
        self._watcher: asyncio.Future[None] | None = None

    # -- tools ---------------------------------------------------------------------------
    def corral_name(self, name: str) -> str:
        known = self.names.get(name)
        if known is not None:
            return known
        for allowed in self.policy.tools.allow:  # `crm.update` in the policy, `crm__update` here
            if allowed.replace(".", "__") == name:
                self.names[name] = allowed
                return allowed
        self.names[name] = name
        return name

    def tool_for(self, tool_def: ToolDefinition) -> Tool:
        """The corral tool for a framework tool: declared in code (``tools=``), else described
        by its definition, its effect as the policy declares it (a write when it does not)."""
        name = self.corral_name(tool_def.name)
        declared = self._declared.get(name) or self._declared.get(tool_def.name)
        if declared is not None:
            return declared if declared.name == name else _renamed(declared, name)
        spec = self.policy.spec(name)
        effect = spec.effect if spec is not None else None
        return executed_elsewhere(
            name,
            effect=effect or "write",
            effect_declared=effect is not None,
            description=tool_def.description or "",
            args_schema=(spec.args_schema if spec is not None and spec.args_schema else {}),
        )

    def register(self, tool_defs: Iterable[ToolDefinition]) -> None:
        """Give the run the tools it does not know yet (a toolset that grew mid-run)."""
        assert self.run is not None
        core = self.run._core  # the run's registry: tools listed after it opened join it
        for tool_def in tool_defs:
            name = self.corral_name(tool_def.name)
            if name not in core.tools:
                core.tools[name] = self.tool_for(tool_def)

    async def open(self, tool_defs: Sequence[ToolDefinition]) -> AsyncRun:
        if self.run is None:
            assert self._opener is not None
            run = self._opener([self.tool_for(t) for t in tool_defs])
            self.run = await run.__aenter__()
        else:
            self.register(tool_defs)
        return self.run

    def offered(self, tool_defs: list[ToolDefinition]) -> list[ToolDefinition]:
        """The definitions the policy lets the model see now."""
        assert self.run is not None
        try:
            on_offer = {spec["name"] for spec in self.run.tool_specs("neutral")}
        except Stop as stop:
            raise _stopped(stop) from None
        return [t for t in tool_defs if self.corral_name(t.name) in on_offer]

    # -- a tool call ---------------------------------------------------------------------
    async def authorize(self, name: str, args: Mapping[str, Any], call_id: str) -> Verdict:
        run = self.run
        if run is None:
            raise ConfigError("the corral run is not open: no tools were listed for this run")
        try:
            ticket = await run.authorize(self.corral_name(name), dict(args), call_id=call_id)
        except ToolRejected as rejected:
            kind: Literal["denied", "failed"] = (
                "denied" if rejected.reason in ("tool_denied", "approval_denied") else "failed"
            )
            return Verdict(kind=kind, message=f"{rejected.reason}: {rejected.message}")
        except Stop as stop:
            return Verdict(kind="stopped", stop=_info_of(stop))
        if ticket.replayed:
            return Verdict(kind="replayed", output=ticket.output)
        self.tickets[call_id] = ticket
        return Verdict(kind="execute", arguments=dict(ticket.arguments))

    async def report(self, call_id: str, output: Any) -> Report:
        ticket = self.tickets.pop(call_id, None)
        if ticket is None or self.run is None:
            return Report(observation=output)
        try:
            return Report(observation=await self.run.report(ticket, _jsonable(output)))
        except Stop as stop:
            return Report(stop=_info_of(stop))

    async def report_failure(self, call_id: str, error: str, timed_out: bool) -> Report:
        ticket = self.tickets.pop(call_id, None)
        if ticket is None or self.run is None:
            return Report()
        try:
            return Report(
                observation=await self.run.report_failure(
                    ticket, RuntimeError(error), timed_out=timed_out
                )
            )
        except Stop as stop:
            return Report(stop=_info_of(stop))

    async def watched(self, call_id: str, execute: Callable[[], Any]) -> Any:
        """Run ``execute`` (the tool) within its ticket's deadline, the kill switch looked at
        every 100 ms; a switch or the deadline cancels it and stops the run."""
        scope = anyio.CancelScope()
        ended: list[tuple[BaseException, bool]] = []
        self._running[call_id] = (scope, time.monotonic(), ended)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())
        # The tool runs in this task: its errors reach the framework as they are.
        try:
            with scope:
                result = await execute()
        finally:
            self._running.pop(call_id, None)
        if ended:
            error, timed_out = ended[0]
            ticket = self.tickets.pop(call_id)
            assert self.run is not None
            try:
                await self.run.report_failure(ticket, error, timed_out=timed_out)
            except Stop as stop:
                raise _stopped(stop) from None
            raise _stopped(Stop("tool_error", ticket.tool))  # report_failure always stops
        return result

    async def _watch(self) -> None:
        """Every 100 ms, while calls run: end those a kill switch now covers or whose
        deadline has passed."""
        while self._running:
            await asyncio.sleep(WATCH_SECONDS)
            now = time.monotonic()
            for call_id, (scope, started, ended) in list(self._running.items()):
                ticket = self.tickets.get(call_id)
                if ticket is None or ended:
                    continue  # not authorized yet, or already ended
                killed = ticket.killed()
                if killed is not None:
                    ended.append((killed, False))
                elif now - started > ticket.timeout + WATCH_SECONDS:
                    ended.append((TimeoutError(f"no answer in {ticket.timeout:g} s"), True))
                if ended:
                    scope.cancel()

    # -- a model request -----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def model_call(
        self,
        model: Model,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> AsyncIterator[tuple[ModelSettings, Callable[[Any], None]]]:
        run = self.run
        if run is None:  # no tools listed yet: nothing to govern with
            yield (settings or {}), lambda usage: None
            return
        asked = (settings or {}).get("max_tokens")
        try:
            mc = run.model_call(
                model=_model_name(model),
                input_tokens=self._bound(messages, params),
                max_tokens=asked,
                provider=getattr(model, "system", None) or None,
            )
        except Stop as stop:
            raise _stopped(stop) from None
        clamped: ModelSettings = {**(settings or {}), "max_tokens": mc.max_tokens}

        def settle(usage: Any) -> None:
            try:
                mc.settle(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
            except Stop as stop:
                raise _stopped(stop) from None

        try:
            async with mc:
                yield clamped, settle
        except RunStopped:
            raise
        except Stop as stop:
            raise _stopped(stop) from None

    # -- the end -------------------------------------------------------------------------
    async def end(self, error: BaseException | None, output: Any = None) -> RunResult | None:
        """End an owned run: ``ok`` with the output, or the stop or error that ended it."""
        if self._watcher is not None:
            self._watcher.cancel()
        run = self.run
        if run is None or not self.owned:
            return None
        if error is None:
            core = run._core
            if core.stop is None and not core.cancelled:
                core.answer = _answer(output)
            await run.__aexit__(None, None, None)
        else:
            stop = error.stop if isinstance(error, RunStopped) else error
            await run.__aexit__(type(stop), stop, None)
        return run.result


def _answer(output: Any) -> str | None:
    if output is None or isinstance(output, str):
        return output
    try:
        return json.dumps(pydantic_core.to_jsonable_python(output))
    except Exception:
        return str(output)


def _model_name(model: Model) -> str:
    return str(getattr(model, "model_name", None) or type(model).__name__)


def _renamed(tool: Tool, name: str) -> Tool:
    from dataclasses import replace

    return replace(tool, name=name)


def _raise(verdict: Verdict) -> None:
    if verdict.kind == "stopped":
        assert verdict.stop is not None
        raise _stopped(_stop_of(verdict.stop))
    if verdict.kind == "replayed":
        raise SkipToolExecution(verdict.output)
    if verdict.kind == "denied":
        raise SkipToolExecution(ToolDenied(verdict.message))
    if verdict.kind == "failed":
        raise ToolFailed(verdict.message)


def _observed(report: Report) -> Any:
    if report.stop is not None:
        raise _stopped(_stop_of(report.stop))
    return report.observation


# -- the capability ---------------------------------------------------------------------


class Corral(AbstractCapability[Any]):
    """Govern every run of a Pydantic AI agent with a corral policy.

    ``Agent(model, tools=[...], capabilities=[Corral(policy, store=..., tenant=...,
    agent=...)])``: each agent run is a corral run in ``store`` (the CLI's default store
    when none is given, so ``corral kill`` and ``corral approvals`` reach it). The
    framework's tools are corral tools of the same name (``crm__update`` is the policy's
    ``crm.update``); their effect is the policy's (``tools.specs.<name>.effect``), else a
    write, unless ``tools=`` declares them in code (``corral.tool(fn, effect="read",
    cost_usd=...)``: corral uses the declaration, the framework still runs the function).

    A stop raises :class:`RunStopped` out of ``agent.run``; :meth:`result` gives the
    corral result of a finished agent run.
    """

    id = "corral"

    def __init__(
        self,
        policy: Policy,
        *,
        store: str | Store | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        tools: Iterable[Tool] | Mapping[str, Tool] | None = None,
        approver: Callable[..., Any] | None = None,
        credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
        clock: Any = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a corral.Policy, got {type(policy).__name__}")
        self.policy = policy
        self._options: dict[str, Any] = {
            "store": store,
            "tenant": tenant,
            "agent": agent,
            "approver": approver,
            "credentials": credentials,
            "clock": clock,
        }
        declared = tools.values() if isinstance(tools, Mapping) else (tools or ())
        self._declared = {t.name: t for t in declared}
        self._governor: Governor | None = None
        self._results: dict[str, RunResult] = {}

    # -- per run -------------------------------------------------------------------------
    async def for_run(self, ctx: RunContext[Any]) -> Corral:
        """A fresh instance per agent run: the corral run and its tickets are the run's."""
        fresh = Corral.__new__(Corral)
        fresh.__dict__.update(self.__dict__)  # the results kept are shared with this one
        run_id, task = _corral_run_id(ctx.run_id), _task(ctx.prompt)

        def opener(tools: list[Tool]) -> AsyncRun:
            return AsyncRun(self.policy, tools=tools, run_id=run_id, task=task, **self._options)

        fresh._governor = Governor(self.policy, opener=opener, declared=self._declared)
        return fresh

    def _gov(self) -> Governor:
        if self._governor is None:
            raise ConfigError("Corral's hooks ran outside an agent run")
        return self._governor

    def result(self, run: Any) -> RunResult | None:
        """The corral result of a finished agent run (an ``AgentRunResult``, or its
        ``run_id``); ``None`` when it is not known (not run with this capability, or
        more than 1,000 runs ago)."""
        run_id = run if isinstance(run, str) else getattr(run, "run_id", None)
        return self._results.get(str(run_id))

    async def wrap_run(self, ctx: RunContext[Any], *, handler: Any) -> Any:
        gov = self._gov()
        try:
            result = await handler()
        except BaseException as exc:
            ended = await gov.end(exc)
            if isinstance(exc, RunStopped) and ended is not None:
                exc.result, exc.run_id = ended, ended.run_id
            elif ended is not None and ended.stop_reason not in ("agent_error", "cancelled"):
                raise self._stop_error(ended) from exc  # a stop another exception hid
            raise
        ended = await gov.end(None, getattr(result, "output", None))
        if ended is not None:
            self._keep(ctx.run_id, ended)
            if ended.stop is not None:
                raise self._stop_error(ended)
        return result

    def _stop_error(self, ended: RunResult) -> RunStopped:
        assert ended.stop is not None
        error = RunStopped(Stop.from_info(ended.stop))
        error.run_id = ended.run_id
        error.result = ended
        return error

    def _keep(self, run_id: str | None, result: RunResult) -> None:
        if run_id is None:
            return
        self._results[run_id] = result
        while len(self._results) > 1000:
            del self._results[next(iter(self._results))]

    # -- tools ---------------------------------------------------------------------------
    async def prepare_tools(
        self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]
    ) -> list[ToolDefinition]:
        gov = self._gov()
        await gov.open(tool_defs)
        return gov.offered(tool_defs)

    async def before_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
    ) -> dict[str, Any]:
        if _inline(ctx):
            verdict = await self._gov().authorize(call.tool_name, args, call.tool_call_id)
        else:
            verdict = await self._authorize(ctx, call.tool_name, args, call.tool_call_id)
        _raise(verdict)
        return verdict.arguments

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        handler: Any,
    ) -> Any:
        gov = self._gov()
        try:
            return await gov.watched(call.tool_call_id, lambda: handler(args))
        except (ModelRetry, ToolFailed) as exc:
            # The tool ran and answered with a failure the model should see: an attempt.
            if _inline(ctx):
                await gov.report(call.tool_call_id, exc.message)
            else:
                await self._report(ctx, call.tool_call_id, exc.message)
            raise

    async def after_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        result: Any,
    ) -> Any:
        if _inline(ctx):
            return _observed(await self._gov().report(call.tool_call_id, result))
        return _observed(await self._report(ctx, call.tool_call_id, result))

    async def on_tool_execute_error(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        error: Exception,
    ) -> Any:
        text = f"{type(error).__name__}: {error}"
        if _inline(ctx):
            report = await self._gov().report_failure(call.tool_call_id, text, False)
        else:
            report = await self._report_failure(ctx, call.tool_call_id, text, False)
        if report.stop is not None:
            raise _stopped(_stop_of(report.stop)) from error
        raise error

    # -- the durable steps: recorded by a durable engine, never run twice on replay ------
    @durable_operation(name="authorize")
    async def _authorize(
        self, ctx: RunContext[Any], tool: str, args: dict[str, Any], call_id: str
    ) -> Verdict:
        return await self._gov().authorize(tool, args, call_id)

    @durable_operation(name="report")
    async def _report(self, ctx: RunContext[Any], call_id: str, output: Any) -> Report:
        return await self._gov().report(call_id, output)

    @durable_operation(name="report_failure")
    async def _report_failure(
        self, ctx: RunContext[Any], call_id: str, error: str, timed_out: bool
    ) -> Report:
        return await self._gov().report_failure(call_id, error, timed_out)

    # -- models --------------------------------------------------------------------------
    def get_wrapper_model(self, model: Model) -> Model | None:
        if self._governor is None:  # the agent's own instance, outside any run
            return None
        return CorralModel(model, governor=self._governor)


def _inline(ctx: RunContext[Any]) -> bool:
    """Whether no durable engine dispatches this run's operations: they are then called
    directly (what ``@durable_operation`` itself would do, without binding its arguments
    for nothing, which cost about 100 µs a call)."""
    return _dispatch(ctx, Corral.id, "authorize") is None


def _corral_run_id(run_id: str | None) -> str | None:
    """The corral run of an agent run: the same id, so a durable replay of the agent run
    (same ``run_id``) resumes its corral run (usage, idempotency keys) instead of a new one."""
    return None if not run_id else f"run_{run_id.replace('-', '')}"


def _task(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt[:1000]
    return ""


# -- without capabilities: a model and a toolset around a run you own -------------------


class CorralModel(WrapperModel):
    """A model whose every request is reserved and settled in a corral run: kill switch,
    steps, tokens and USD before it (``max_tokens`` clamped), the reported usage after.

    ``CorralModel(model, run)`` around an ``AsyncRun`` you opened; :class:`Corral` uses it
    for each agent run by itself.
    """

    def __init__(
        self,
        wrapped: Model | str,
        run: AsyncRun | None = None,
        *,
        governor: Governor | None = None,
    ) -> None:
        super().__init__(wrapped)
        if governor is None:
            if run is None:
                raise ConfigError("CorralModel needs the corral run: CorralModel(model, run)")
            governor = Governor(run._core.policy, run)
        self.governor = governor

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        gov = self.governor
        async with gov.model_call(
            self.wrapped, messages, model_settings, model_request_parameters
        ) as (settings, settle):
            response = await self.wrapped.request(messages, settings, model_request_parameters)
            settle(response.usage)
        return response

    @contextlib.asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        gov = self.governor
        async with gov.model_call(
            self.wrapped, messages, model_settings, model_request_parameters
        ) as (settings, settle):
            async with self.wrapped.request_stream(
                messages, settings, model_request_parameters, run_context
            ) as stream:
                yield stream
            usage = stream.usage  # a property in recent versions, a method before
            settle(usage() if callable(usage) else usage)


class CorralToolset(WrapperToolset[Any]):
    """A toolset whose calls pass corral's gateway, for a run you opened yourself.

    ``CorralToolset(toolset, run)``: the model is offered what the policy allows; each
    call is authorized before it runs (approval, budgets, idempotency), reported after,
    and watched for the kill switch and its deadline while it runs. A stop raises
    :class:`RunStopped`, which ``async with run`` records as the run's stop. Tools the run
    was not given are described from their definitions (effect from the policy).
    """

    def __init__(
        self,
        wrapped: AbstractToolset[Any],
        run: AsyncRun,
        *,
        tools: Iterable[Tool] | None = None,
    ) -> None:
        super().__init__(wrapped)
        declared = {t.name: t for t in tools or ()}
        self.governor = Governor(run._core.policy, run, declared=declared)

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        tools = await super().get_tools(ctx)
        gov = self.governor
        defs = [tool.tool_def for tool in tools.values()]
        await gov.open(defs)
        keep = {t.name for t in gov.offered(defs)}
        return {name: tool for name, tool in tools.items() if name in keep}

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        gov = self.governor
        call_id = ctx.tool_call_id or f"{name}-{id(tool_args)}"
        verdict = await gov.authorize(name, tool_args, call_id)
        if verdict.kind == "replayed":
            return verdict.output
        if verdict.kind == "denied":
            return ToolDenied(verdict.message)
        _raise(verdict)
        try:
            output = await gov.watched(
                call_id, lambda: super(CorralToolset, self).call_tool(
                    name, verdict.arguments, ctx, tool
                )
            )
        except RunStopped:
            raise
        except (ModelRetry, ToolFailed) as exc:
            await gov.report(call_id, exc.message)
            raise
        except Exception as exc:
            report = await gov.report_failure(call_id, f"{type(exc).__name__}: {exc}", False)
            if report.stop is not None:
                raise _stopped(_stop_of(report.stop)) from exc
            raise
        return _observed(await gov.report(call_id, output))
