"""LangChain's tools as corral governs them, and what corral's refusals and stops become
in LangChain's own terms: a ``ToolMessage`` with ``status="error"`` for the model, a
dict in the agent's state for the caller.

Imports ``corral.loop`` (the run's faces), the gateway's run state (the one place that
reads what the run itself knows: its stop, whether a tool needs approval) and
``langchain_core``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from corral.exceptions import ConfigError, Stop
from corral.gateway.state import RunState
from corral.loop.base import RunBase
from corral.stops import STOP_REASONS, StopInfo
from corral.tools import Tool, executed_elsewhere

#: The state keys corral writes: the run's id, and its stop once it has one.
RUN_KEY = "corral_run_id"
STOP_KEY = "corral_stop"

F = TypeVar("F", bound=RunBase)


def core(run: RunBase) -> RunState:
    """The run's own state: its stop and its tools' effective settings, which the adapter
    reads (Run has no public way to say whether a call will need approval)."""
    return run._core


def face(run: RunBase, cls: type[F]) -> F:
    """``run`` as a :class:`~corral.Run` or :class:`~corral.AsyncRun`: the same run (one
    state, one store record), seen through the face the framework's code path needs (an
    agent interrupted under ``ainvoke`` may be resumed under ``invoke``)."""
    if isinstance(run, cls):
        return run
    other = object.__new__(cls)
    other.__dict__.update(run.__dict__)
    return other


# -- tools ------------------------------------------------------------------------------
def corral_tool(tool: BaseTool) -> Tool:
    """The corral tool for a LangChain tool: no function here (LangChain executes it, once
    corral has authorized the call), its arguments checked against the schema the model is
    shown, its effect and cost from the policy (``tools.specs.<name>``; an effect nobody
    declares is a write)."""
    try:
        return executed_elsewhere(
            tool.name,
            effect="write",
            effect_declared=False,
            description=tool.description or "",
            args_schema=_schema(tool),
            validate=True,
        )
    except Exception as exc:
        raise ConfigError(f"the LangChain tool {tool.name!r} cannot be governed: {exc}") from None


def corral_tools(tools: Iterable[BaseTool | Any]) -> list[Tool]:
    """corral tools for LangChain tools, to give a :class:`~corral.Run` that governs a
    LangGraph ``ToolNode`` (``corral.AsyncRun(policy, tools=corral_tools(tools))``).
    Provider-side tools (dicts) are left out: LangChain does not execute them."""
    return [corral_tool(t) for t in tools if isinstance(t, BaseTool)]


def _schema(tool: BaseTool) -> Mapping[str, Any]:
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    return {"type": "object"}


# -- what the model is told -------------------------------------------------------------
def refusal(call: ToolCall, text: str) -> ToolMessage:
    """A refused call as LangChain tells the model a tool failed."""
    return ToolMessage(
        content=text, name=call["name"], tool_call_id=call["id"] or "", status="error"
    )


def stopped_text(stop: Stop | StopInfo) -> str:
    """What the model (and a reader of the messages) sees when corral ends the run."""
    info = stop.info if isinstance(stop, Stop) else stop
    said = f": {info.message}" if info.message else ""
    return f"Stopped by corral ({info}{said}). The run is over; do not retry."


def denied_text(name: str, call_id: str | None, reason: str | None) -> str:
    """A refused approval, in the words LangChain's own human-in-the-loop uses."""
    if reason:
        return f"User rejected the tool call for `{name}` with reason: {reason}"
    return (
        f"User rejected the tool call for `{name}` with id {call_id}. The tool was not "
        "executed. Do not retry this tool call unless the user explicitly requests it."
    )


def content_of(observation: Any) -> str | list[Any]:
    """The observation corral hands back, as a ToolMessage's content."""
    if isinstance(observation, str):
        return observation
    if isinstance(observation, list) and all(isinstance(x, str | dict) for x in observation):
        return observation
    try:
        return json.dumps(observation, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(observation)


# -- what the caller reads --------------------------------------------------------------
def stop_of(state: Mapping[str, Any]) -> Stop | None:
    """The :class:`~corral.Stop` that ended the agent run whose final ``state`` (what
    ``agent.invoke`` returns) is given, or ``None`` if it ended ``ok`` (or is not over).

    >>> stop_of({"corral_stop": {"reason": "max_tool_calls", "detail": "run",
    ...                          "retryable": False, "limit": 15, "observed": 16}})
    Stop('max_tool_calls:run (limit 15, would be 16)')
    """
    data = state.get(STOP_KEY)
    if not isinstance(data, Mapping):
        return None
    reason = data.get("reason")
    if reason not in STOP_REASONS or reason == "ok":
        return None
    info = StopInfo(
        reason=reason,
        detail=str(data.get("detail", "")),
        message=str(data.get("message", "")),
        tool=data.get("tool"),
        scope=data.get("scope"),
        limit=_number(data.get("limit")),
        observed=_number(data.get("observed")),
        retryable=bool(data.get("retryable", False)),
        retry_after=data.get("retry_after"),
        extra=dict(data.get("extra") or {}),
    )
    return Stop.from_info(info)


def _number(value: Any) -> Any:
    """A figure of a stop as ``StopInfo.to_dict`` wrote it (amounts as decimal text)."""
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            return value
    return value
