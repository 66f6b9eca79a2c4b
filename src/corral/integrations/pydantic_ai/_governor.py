"""The corral run behind one agent run (:class:`Governor`): the framework's tools as corral
tools, a call authorized, watched while it runs and reported, a model request reserved and
settled, the run's end.

Imports ``pydantic_ai`` (types), ``corral.loop`` and what is below it, and ``_verdicts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import anyio
import pydantic_core
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition

from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.integrations.pydantic_ai._verdicts import (
    Report,
    RunStopped,
    Verdict,
    info_of,
    stopped,
)
from corral.loop.run import AsyncRun
from corral.loop.tickets import Ticket
from corral.models.base import PER_MESSAGE_OVERHEAD
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.tools import Tool, executed_elsewhere

#: How often a running tool looks at the kill switch (the switch itself is cached ≤ 1 s).
WATCH_SECONDS = 0.1


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
            on_offer = {eff.tool.name for _, eff in self.run._on_offer()}
        except Stop as stop:
            raise stopped(stop) from None
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
            return Verdict(kind="stopped", stop=info_of(stop))
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
            return Report(stop=info_of(stop))

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
            return Report(stop=info_of(stop))

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
                raise stopped(stop) from None
            raise stopped(Stop("tool_error", ticket.tool))  # report_failure always stops
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
            raise stopped(stop) from None
        clamped: ModelSettings = {**(settings or {}), "max_tokens": mc.max_tokens}

        def settle(usage: Any) -> None:
            try:
                mc.settle(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
            except Stop as stop:
                raise stopped(stop) from None

        try:
            async with mc:
                yield clamped, settle
        except RunStopped:
            raise
        except Stop as stop:
            raise stopped(stop) from None

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
    return dataclasses.replace(tool, name=name)
