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
    unknown = set(declared) - {t.name for t in function_tools(agent)} - {
        corral_name(t.name) for t in function_tools(agent)
    }
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
    # The tool's own invoker, with the SDK's failure handling off: corral hears of a
    # failure (report_failure), instead of the SDK turning it into text for the model.
    raw = set_function_tool_failure_error_function(copy.copy(tool), None)
    inner = raw.on_invoke_tool
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

    needs_approval: Any = user_approval
    if gov.interrupts(name):

        async def needs_approval(ctx: RunContextWrapper[Any], params: Any, call_id: str) -> bool:
            if await _approvals.needs_approval(gov, name, tool.name, params, call_id):
                return True
            if isinstance(user_approval, bool):
                return user_approval
            return bool(await user_approval(ctx, params, call_id))

    return dataclasses.replace(
        tool,
        on_invoke_tool=on_invoke_tool,
        is_enabled=is_enabled,
        needs_approval=needs_approval,
    )


def _offered(gov: Governor, name: str) -> bool:
    """Whether the model is offered ``name`` now: allowed, given to the run, neither
    kill-switched nor degraded (as ``run.tool_specs`` judges it)."""
    if not gov.allowed(name):
        return False
    core = gov.core
    eff = core.effective(name)
    if killswitch.blocking_switch(core, name, eff) is not None:
        return False
    return breaker.read(core, eff.breaker).state != "open"


async def _execute(gov: Governor, ticket: Ticket, invocation: Any) -> Any:
    """Run the SDK's invocation within the ticket's timeout, looking every
    :data:`WATCH_SECONDS` whether a ``stop_all`` kill switch now covers it; a failure,
    a timeout or the switch is reported (raising the run's stop)."""
    task = asyncio.ensure_future(invocation)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ticket.timeout
    try:
        while not task.done():
            left = deadline - loop.time()
            if left <= 0:
                task.cancel()
                failure = TimeoutError(f"{ticket.tool} took more than {ticket.timeout:g} s")
                gov.report_failure(ticket, failure, timed_out=True)
            await asyncio.wait((task,), timeout=min(WATCH_SECONDS, left))
            if task.done():
                break
            killed = ticket.killed()
            if killed is not None:
                task.cancel()
                gov.report_failure(ticket, killed, timed_out=False)
    except BaseException:
        task.cancel()  # the run was cancelled, or stopped: the tool goes with it
        raise
    try:
        return task.result()
    except Exception as exc:  # the tool raised: a failure (the SDK would have told the model)
        gov.report_failure(ticket, exc, timed_out=False)
    except asyncio.CancelledError as exc:  # cancelled from inside: it did not finish
        gov.report_failure(ticket, exc, timed_out=False)
    raise AssertionError("report_failure returned")  # pragma: no cover


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
