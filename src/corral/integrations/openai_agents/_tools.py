"""Function tools through corral's gateway.

:func:`governed_tool` returns a new ``FunctionTool`` (``dataclasses.replace``) whose
``on_invoke_tool`` runs ``run.authorize`` → the tool's own invoker → ``run.report`` (or
``run.report_failure``), whose ``is_enabled`` leaves out what the policy does not offer
(not allowed, kill-switched, degraded), and whose ``needs_approval`` asks for a write's
approval through the SDK's interruption (:mod:`._approvals`). :func:`tools_of` gives the
run the corral side of each tool.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import inspect
import json
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunContextWrapper
from agents.tool import set_function_tool_failure_error_function
from agents.tool_context import ToolContext as SDKToolContext

from corral.controls import breaker
from corral.exceptions import ConfigError, Stop, ToolDefinitionError, ToolRejected
from corral.gateway.guards import killswitch
from corral.integrations.openai_agents import _approvals
from corral.integrations.openai_agents._govern import Governor, corral_name, valid_name
from corral.integrations.openai_agents._stop import stopped
from corral.loop.tickets import Ticket
from corral.tools import Effect, Tool, executed_elsewhere

#: How often a running tool looks whether a ``stop_all`` kill switch now covers it (s).
WATCH_SECONDS = 0.1

_NO_MODEL = (
    "the model call before this tool call was not governed: pass "
    "run_config=corral.integrations.openai_agents.run_config(run) to Runner.run "
    "(or give the agent a Model object, which govern() wraps)"
)


def function_tools(agent: Any) -> list[FunctionTool]:
    """The function tools of ``agent`` and of the agents it hands off to (each once)."""
    seen: set[int] = set()
    found: dict[str, FunctionTool] = {}

    def walk(a: Any) -> None:
        if id(a) in seen:
            return
        seen.add(id(a))
        for t in getattr(a, "tools", ()):
            if isinstance(t, FunctionTool):
                found.setdefault(t.name, t)
        for h in getattr(a, "handoffs", ()):
            target = h if isinstance(h, Agent) else _handoff_agent(h)
            if target is not None:
                walk(target)

    walk(agent)
    return list(found.values())


def _handoff_agent(h: Any) -> Any:
    """The agent a ``Handoff`` object leads to, when it says (``handoff(agent)`` does)."""
    ref = getattr(h, "_agent_ref", None)
    return ref() if callable(ref) else None


def tools_of(agent: Any, *, effects: Mapping[str, Effect] | None = None) -> list[Tool]:
    """The corral side of ``agent``'s function tools (and its handoffs' agents'), to give
    the run: ``corral.AsyncRun(policy, tools=tools_of(agent))``.

    Each is named as the SDK names it, with ``__`` read as ``.`` (``crm__update`` is
    ``crm.update``), checked against the tool's own JSON Schema, and executed by the SDK
    (corral never calls it). ``effects`` declares what a tool does (``{"get_weather":
    "read"}``, by either name); a tool nobody declares is a write, unless the policy's
    ``tools.specs.<name>.effect`` says otherwise (and a warning at start says so).
    """
    declared = dict(effects or {})
    out: list[Tool] = []
    for t in function_tools(agent):
        name = corral_name(t.name)
        if not valid_name(name):
            raise ToolDefinitionError(
                f"the SDK tool {t.name!r} has no corral name: corral names are lower case "
                f"[a-z0-9_.-] ({name!r} is not); rename it (function_tool(name_override=...))"
            )
        effect = declared.get(t.name, declared.get(name))
        if effect not in (None, "read", "write"):
            raise ConfigError(f"effects[{t.name!r}] must be 'read' or 'write', got {effect!r}")
        out.append(
            executed_elsewhere(
                name,
                effect=effect or "write",
                effect_declared=effect is not None,
                description=t.description,
                args_schema=t.params_json_schema,
                validate=True,
            )
        )
    unknown = (
        set(declared)
        - {t.name for t in function_tools(agent)}
        - {corral_name(t.name) for t in function_tools(agent)}
    )
    if unknown:
        raise ConfigError(f"effects names no tool of the agent: {', '.join(sorted(unknown))}")
    return out


def governed_tool(gov: Governor, tool: FunctionTool) -> FunctionTool:
    """``tool`` as corral governs it (a new ``FunctionTool``; ``tool`` is left as it was)."""
    name = corral_name(tool.name)
    if gov.allowed(name) is False and name in gov.core.allowed:
        raise ConfigError(
            f"the policy allows {name} but the run has no tool of that name: give the run "
            "the agent's tools, corral.AsyncRun(policy, tools=tools_of(agent), ...)"
        )
    inner = _raw_invoker(tool)
    user_enabled = tool.is_enabled
    user_approval = tool.needs_approval

    async def on_invoke_tool(ctx: SDKToolContext[Any], input: str) -> Any:
        if not gov.model_seen:
            raise ConfigError(_NO_MODEL)
        call_id = ctx.tool_call_id
        if call_id in gov.pending:  # the SDK runs it: approved there (or the queue decided)
            told = _approvals.decided(gov, call_id, True)
            if told is not None:
                return told
        try:
            args = json.loads(input) if input.strip() else {}
        except ValueError:
            args = input  # corral hands the problem back to the model
        try:
            ticket = await gov.authorize(name, args, call_id)
        except ToolRejected as rejected:
            return rejected.message
        except Stop as stop:
            raise stopped(stop) from None
        if ticket.replayed:
            return ticket.output
        try:
            output = await _execute(gov, ticket, inner(ctx, input))
            return gov.report(ticket, output)
        except Stop as stop:
            raise stopped(stop) from None

    async def is_enabled(ctx: RunContextWrapper[Any], agent: Any) -> bool:
        try:
            _approvals.sync(gov, ctx)
            offered = _offered(gov, name)
        except Stop as stop:
            raise stopped(stop) from None
        if not offered:
            return False
        if isinstance(user_enabled, bool):
            return user_enabled
        answer = user_enabled(ctx, agent)
        return bool(await answer) if inspect.isawaitable(answer) else bool(answer)

    # The SDK reads the annotations of ``on_invoke_tool`` at every call (to choose the
    # context it passes): as objects, not text to evaluate each time.
    on_invoke_tool.__annotations__ = _INVOKE_ANNOTATIONS
    needs_approval: Any = user_approval
    if gov.interrupts(name):

        async def needs_approval(ctx: RunContextWrapper[Any], params: Any, call_id: str) -> bool:
            if await _approvals.needs_approval(gov, name, tool.name, params, call_id):
                return True
            if isinstance(user_approval, bool):
                return user_approval
            return bool(await user_approval(ctx, params, call_id))

    return _replaced(
        tool, on_invoke_tool=on_invoke_tool, is_enabled=is_enabled, needs_approval=needs_approval
    )


_INVOKE_ANNOTATIONS = {"ctx": SDKToolContext, "input": str, "return": Any}

_RAW: dict[int, tuple[FunctionTool, Any]] = {}


def _raw_invoker(tool: FunctionTool) -> Any:
    """The tool's own invoker with the SDK's failure handling off, so that corral hears of
    a failure (``report_failure``) instead of the SDK turning it into text for the model.
    Made once per tool (a copy of it: the tool itself is left as it was)."""
    found = _RAW.get(id(tool))
    if found is None or found[0] is not tool:
        raw = set_function_tool_failure_error_function(copy.copy(tool), None)
        found = _RAW[id(tool)] = (tool, raw.on_invoke_tool)
        weakref.finalize(tool, _RAW.pop, id(tool), None)
    return found[1]


def _replaced(tool: FunctionTool, **changes: Any) -> FunctionTool:
    """``dataclasses.replace(tool, **changes)`` without re-running ``__post_init__``: the
    tool is normalized already, and doing it again (a deep copy of its schema, made
    strict again) cost more than the rest of governing it, once per tool per run."""
    new = object.__new__(type(tool))
    new.__dict__.update(tool.__dict__)
    new.__dict__.update(changes)
    return new


def _offered(gov: Governor, name: str) -> bool:
    """Whether the model is offered ``name`` now: allowed, given to the run, matching its
    pin, neither kill-switched nor degraded (as ``run.tool_specs`` judges it)."""
    core = gov.core
    if not gov.allowed(name) or name in core.unpinned:
        return False
    eff = core.effective(name)
    if killswitch.blocking_switch(core, name, eff) is not None:
        return False
    return breaker.read(core, eff.breaker).state != "open"


class _Watch:
    """Looks every :data:`WATCH_SECONDS`, while a tool runs in the current task, whether a
    ``stop_all`` kill switch now covers it or its time is up; then cancels the task and
    says why (a timer on the loop: no second task per call)."""

    __slots__ = ("deadline", "failure", "handle", "loop", "task", "ticket", "timed_out")

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.deadline = self.loop.time() + ticket.timeout
        self.failure: BaseException | None = None
        self.timed_out = False
        self.handle = self.loop.call_at(min(self.deadline, self.loop.time() + WATCH_SECONDS),
                                        self.look)  # fmt: skip

    def look(self) -> None:
        now = self.loop.time()
        ticket = self.ticket
        if now >= self.deadline:
            self.failure = TimeoutError(f"{ticket.tool} took more than {ticket.timeout:g} s")
            self.timed_out = True
        else:
            self.failure = ticket.killed()
        if self.failure is not None and self.task is not None:
            self.task.cancel()
            return
        self.handle = self.loop.call_at(min(self.deadline, now + WATCH_SECONDS), self.look)

    def stop(self) -> None:
        self.handle.cancel()


async def _execute(gov: Governor, ticket: Ticket, invocation: Any) -> Any:
    """Await the SDK's invocation within the ticket's timeout, looking every
    :data:`WATCH_SECONDS` whether a ``stop_all`` kill switch now covers it; a failure,
    a timeout or the switch is reported (raising the run's stop)."""
    watch = _Watch(ticket)
    try:
        return await invocation
    except asyncio.CancelledError as cancelled:
        if watch.failure is None:
            raise  # the run itself was cancelled: the ticket is settled as the run ends
        if watch.task is not None:
            watch.task.uncancel()
        gov.report_failure(ticket, watch.failure, timed_out=watch.timed_out)
        raise AssertionError("report_failure returned") from cancelled  # pragma: no cover
    except Exception as exc:  # the tool raised: a failure (the SDK would have told the model)
        gov.report_failure(ticket, exc, timed_out=False)
        raise AssertionError("report_failure returned") from exc  # pragma: no cover
    finally:
        watch.stop()


def governed_handoff(gov: Governor, h: Handoff[Any, Any], govern_agent: Any) -> Handoff[Any, Any]:
    """``h`` whose target agent is governed too (the same run)."""
    original = h.on_invoke_handoff

    async def on_invoke_handoff(ctx: RunContextWrapper[Any], input: str) -> Any:
        return govern_agent(await original(ctx, input))

    return dataclasses.replace(h, on_invoke_handoff=on_invoke_handoff)


def hosted_allowed(gov: Governor, tools: Iterable[Any]) -> list[Any]:
    """The tools that are not function tools, kept when the policy allows their name."""
    allowed = gov.core.allowed
    return [t for t in tools if corral_name(str(getattr(t, "name", ""))) in allowed]
