"""corral's gateway around one LangGraph tool call: authorize (allowlist, arguments,
budgets, kill switch, approval...) → LangGraph executes the tool → report, with the call
bounded by its deadline and watched for a ``stop_all`` kill switch while it runs.

Refusals reach the model as LangChain does it, a ``ToolMessage`` with ``status="error"``.
Approvals go through the run's own channel (the store's queue, or an in-process
approver), or through LangGraph's ``interrupt()`` (:class:`Interrupts`): the reviewer's
decision is bound to the exact arguments it was given for, and an edit is a new action —
the edited arguments are re-digested, approved, and are the only ones that run.

:class:`ToolGate` puts the gate on a plain LangGraph ``ToolNode``; ``CorralMiddleware``
uses the same functions for ``create_agent``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

from langchain_core.messages import ToolCall, ToolMessage
from langgraph.errors import GraphBubbleUp, GraphInterrupt
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command, interrupt

from corral.controls.approvals import ApprovalDecision, ApprovalRequest
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway._inline import expired
from corral.gateway.canonical import args_digest
from corral.gateway.drivers import await_within
from corral.gateway.guards.killswitch import Cancelled
from corral.integrations.langchain._tools import (
    content_of,
    core,
    denied_text,
    face,
    refusal,
    stopped_text,
)
from corral.loop.base import RunBase
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import Ticket

Result = ToolMessage | Command[Any]
Handler = Callable[[ToolCallRequest], Result]
AsyncHandler = Callable[[ToolCallRequest], Awaitable[Result]]
Approvals = Literal["corral", "interrupt"]

#: What the reviewer decided for the call being authorized in this context: (tool, digest
#: of the arguments decided on, decision). Read once by :func:`interrupt_approver`.
_DECIDED: ContextVar[tuple[str, str, ApprovalDecision] | None] = ContextVar(
    "corral_langgraph_decision", default=None
)

_EDIT_NOTICE = (
    "Note: a human reviewer replaced this tool call before it ran; the call in your "
    "message is not the one that executed. Do not re-issue your original call. "
    "Executed instead: {name} with arguments {args}."
)


# -- approvals through LangGraph's interrupt() ----------------------------------------
def interrupt_approver(request: ApprovalRequest) -> ApprovalDecision:
    """The run's approver under ``approvals="interrupt"``: the reviewer's decision, if it was
    given for exactly this tool and these arguments (their digest), used once; anything
    else is refused (fail closed)."""
    decided = _DECIDED.get()
    if decided is None or (decided[0], decided[1]) != (request.tool, request.args_digest):
        return ApprovalDecision(
            approved=False, approver="corral", reason="no decision for these arguments"
        )
    _DECIDED.set(None)
    return decided[2]


@dataclasses.dataclass(frozen=True, slots=True)
class _Decided:
    args: dict[str, Any]
    decision: ApprovalDecision
    edited: bool


class Interrupts:
    """Ask for approvals with LangGraph's ``interrupt()`` (the graph needs a checkpointer):
    one interrupt per call that needs one, answered with ``Command(resume=...)``:
    ``{"type": "approve"}``, ``{"type": "edit", "edited_action": {"name": ..., "args":
    {...}}}`` or ``{"type": "reject", "message": "why"}`` (LangChain's per-call decisions;
    an optional ``"approver"`` names who decided). The time the graph spends paused is
    counted as the run's waiting time, not against ``max_seconds``."""

    def __init__(self) -> None:
        self._paused: dict[str, float] = {}  # run id -> when the graph paused

    def ask(self, run: RunBase, request: ToolCallRequest) -> _Decided:
        call = request.tool_call
        name, args = call["name"], dict(call["args"])
        digest = args_digest(args)
        value = {
            "type": "tool_approval",
            "tool_call_id": call["id"],
            "name": name,
            "args": args,
            "args_digest": digest,
            "run_id": run.id,
            "description": f"corral: {name} needs approval before it runs",
        }
        try:
            answer = interrupt(value)
        except GraphInterrupt:
            self._paused.setdefault(run.id, time.monotonic())
            raise
        paused = self._paused.pop(run.id, None)
        if paused is not None:  # a human's time is not charged to max_seconds
            core(run).time.waiting += time.monotonic() - paused
        return _decision(name, args, answer)

    def needs(self, run: RunBase, name: str) -> bool:
        """Whether a call of ``name`` waits for approval in this run (an unknown or
        disallowed tool does not: the gateway refuses it without asking anyone)."""
        state = core(run)
        if name not in state.tools or name not in state.allowed or state.observes("approvals"):
            return False
        return state.effective(name).require_approval


def _decision(name: str, args: dict[str, Any], answer: Any) -> _Decided:
    """A resume value as a decision; one corral cannot read is a refusal (fail closed)."""
    kind = answer.get("type") if isinstance(answer, dict) else None
    approver = answer.get("approver") if isinstance(answer, dict) else None
    who = approver if isinstance(approver, str) and approver else "langgraph-interrupt"
    if kind == "approve":
        return _Decided(args, ApprovalDecision(approved=True, approver=who), False)
    if kind == "edit":
        action = answer.get("edited_action")
        edited = action.get("args") if isinstance(action, dict) else None
        if isinstance(edited, dict) and action.get("name", name) == name:
            return _Decided(dict(edited), ApprovalDecision(approved=True, approver=who), True)
        why = "an edit must keep the tool and give its arguments as an object"
        return _Decided(args, ApprovalDecision(approved=False, approver=who, reason=why), False)
    if kind == "reject":
        message = answer.get("message")
        why = message if isinstance(message, str) else ""
        return _Decided(args, ApprovalDecision(approved=False, approver=who, reason=why), False)
    why = f"the resume value {answer!r} is not a decision (approve, edit or reject)"
    return _Decided(args, ApprovalDecision(approved=False, approver=who, reason=why), False)


# -- the gate -------------------------------------------------------------------------
def _refused(call: ToolCall, error: Stop | ToolRejected) -> ToolMessage:
    if error.reason == "approval_denied":
        reason = _denial_reason(error.message, call["name"])
        return refusal(call, denied_text(call["name"], call["id"], reason))
    if isinstance(error, ToolRejected):
        return refusal(call, error.message)
    return refusal(call, stopped_text(error))


def _denial_reason(message: str, name: str) -> str | None:
    prefix = f"{name} was not approved"
    rest = message[len(prefix) :].lstrip(": ") if message.startswith(prefix) else message
    return rest or None


def _prepared(
    run: RunBase, request: ToolCallRequest, interrupts: Interrupts | None
) -> tuple[dict[str, Any], _Decided | None]:
    """The arguments to authorize, after the reviewer's decision when one is needed."""
    call = request.tool_call
    if interrupts is None or not interrupts.needs(run, call["name"]):
        return call["args"], None
    decided = interrupts.ask(run, request)
    return decided.args, decided


@contextlib.contextmanager
def _deciding(name: str, decided: _Decided | None) -> Iterator[None]:
    if decided is None:
        yield
        return
    token = _DECIDED.set((name, args_digest(decided.args), decided.decision))
    try:
        yield
    finally:
        _DECIDED.reset(token)


def _to_run(request: ToolCallRequest, ticket: Ticket, decided: _Decided | None) -> ToolCallRequest:
    if decided is None or not decided.edited:
        return request
    return request.override(tool_call={**request.tool_call, "args": dict(ticket.arguments)})


def _message_in(result: Result, call_id: str | None) -> ToolMessage | None:
    if isinstance(result, ToolMessage):
        return result
    update = result.update if isinstance(result, Command) else None
    messages = update.get("messages") if isinstance(update, dict) else None
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, ToolMessage) and message.tool_call_id == call_id:
            return message
    return None


def _with(result: Result, old: ToolMessage | None, new: ToolMessage) -> Result:
    if isinstance(result, ToolMessage) or old is None:
        return new if isinstance(result, ToolMessage) else result
    update = dict(result.update)  # type: ignore[arg-type]
    update["messages"] = [new if m is old else m for m in update["messages"]]
    return dataclasses.replace(result, update=update)


def _observed(message: ToolMessage, observation: Any, decided: _Decided | None) -> ToolMessage:
    content = content_of(observation)
    if decided is not None and decided.edited:
        notice = _EDIT_NOTICE.format(
            name=message.name, args=json.dumps(decided.args, default=str, ensure_ascii=False)
        )
        if isinstance(content, str):
            content = f"{notice}\n\nTool response:\n{content}" if content else notice
        else:
            content = [{"type": "text", "text": notice}, *content]
    if content == message.content:
        return message
    return message.model_copy(update={"content": content})


class ToolFailed(Exception):
    """The tool's failure, as LangGraph reported it in an error ``ToolMessage``."""


def govern(
    run: Run, request: ToolCallRequest, handler: Handler, interrupts: Interrupts | None
) -> Result:
    """One tool call under ``run``, for LangGraph's sync path."""
    call = request.tool_call
    args, decided = _prepared(run, request, interrupts)
    try:
        with _deciding(call["name"], decided):
            ticket = run.authorize(call["name"], args, call_id=call["id"] or None)
    except (Stop, ToolRejected) as refused:
        return _refused(call, refused)
    if ticket.replayed:
        return ToolMessage(
            content=content_of(ticket.output), name=call["name"], tool_call_id=call["id"] or ""
        )
    try:
        try:
            # Inline, in the thread LangGraph runs the tool in: a worker thread of corral's
            # own (to abandon the tool at its deadline or at a kill switch) would cost more
            # than the framework's whole call. The kill switch and the deadline are checked
            # before every call, and the async path watches a call in flight.
            result: Result = handler(_to_run(request, ticket, decided))
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return _failed(run.report_failure(ticket, exc), call)
        message = _message_in(result, call["id"])
        if message is not None and message.status == "error":
            return _failed(run.report_failure(ticket, ToolFailed(message.text)), call)
        observation = run.report(ticket, "" if message is None else message.content)
    except Stop as stop:
        return refusal(call, stopped_text(stop))
    if message is None:
        return result
    return _with(result, message, _observed(message, observation, decided))


async def agovern(
    run: AsyncRun,
    request: ToolCallRequest,
    handler: AsyncHandler,
    interrupts: Interrupts | None,
) -> Result:
    """One tool call under ``run``, for LangGraph's async path."""
    call = request.tool_call
    args, decided = _prepared(run, request, interrupts)
    try:
        with _deciding(call["name"], decided):
            ticket = await run.authorize(call["name"], args, call_id=call["id"] or None)
    except (Stop, ToolRejected) as refused:
        return _refused(call, refused)
    if ticket.replayed:
        return ToolMessage(
            content=content_of(ticket.output), name=call["name"], tool_call_id=call["id"] or ""
        )
    try:
        try:
            # In this task, as LangGraph awaits it; a timer looks at the kill switch every
            # WATCH_SECONDS once the tool suspends, and cancels it at a stop_all switch or
            # at the ticket's deadline (no task of its own per call).
            result = await await_within(
                handler(_to_run(request, ticket, decided)), ticket.timeout, ticket.killed
            )
        except Cancelled as killed:
            return _failed(await run.report_failure(ticket, killed), call)
        except TimeoutError as exc:
            if not expired(exc):  # the tool's own TimeoutError: a failure like any other
                return _failed(await run.report_failure(ticket, exc), call)
            failure = TimeoutError(f"{call['name']} gave no answer in {ticket.timeout:g} s")
            return _failed(await run.report_failure(ticket, failure, timed_out=True), call)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return _failed(await run.report_failure(ticket, exc), call)
        message = _message_in(result, call["id"])
        if message is not None and message.status == "error":
            return _failed(await run.report_failure(ticket, ToolFailed(message.text)), call)
        observation = await run.report(ticket, "" if message is None else message.content)
    except Stop as stop:
        return refusal(call, stopped_text(stop))
    if message is None:
        return result
    return _with(result, message, _observed(message, observation, decided))


def _failed(_: Any, call: ToolCall) -> ToolMessage:
    # report_failure raises the run's stop; reached only if it ever returned instead.
    return refusal(call, f"{call['name']} failed")


# -- a plain LangGraph ToolNode -------------------------------------------------------
class ToolGate:
    """corral's gateway for a LangGraph ``ToolNode`` you build yourself.

    Give its hooks to the node, and bind the run that governs an invocation around it::

        gate = ToolGate()
        node = ToolNode(tools, wrap_tool_call=gate.wrap_tool_call,
                        awrap_tool_call=gate.awrap_tool_call)
        ...
        async with corral.AsyncRun(policy, tools=corral_tools(tools)) as run:
            with gate.bound(run):
                await graph.ainvoke({"messages": [...]})

    With ``approvals="interrupt"``, give the run ``approver=gate.approver``. A call
    made with no run bound is refused by raising :class:`~corral.ConfigError` (never
    executed ungoverned).
    """

    def __init__(self, *, approvals: Approvals = "corral") -> None:
        if approvals not in ("corral", "interrupt"):
            raise ConfigError(f"approvals must be 'corral' or 'interrupt', got {approvals!r}")
        self._interrupts = Interrupts() if approvals == "interrupt" else None
        self._run: ContextVar[RunBase | None] = ContextVar("corral_tool_gate_run", default=None)

    @property
    def approver(self) -> Callable[[ApprovalRequest], ApprovalDecision] | None:
        """The approver a run needs under ``approvals="interrupt"`` (else ``None``)."""
        return None if self._interrupts is None else interrupt_approver

    @contextlib.contextmanager
    def bound(self, run: RunBase) -> Iterator[RunBase]:
        """Govern the tool calls made in this block (and the tasks it starts) with ``run``."""
        if self._interrupts is not None and core(run).approver is not interrupt_approver:
            raise ConfigError(
                "approvals='interrupt': create the run with approver=gate.approver, so that "
                "the reviewer's decisions reach it"
            )
        token = self._run.set(run)
        try:
            yield run
        finally:
            self._run.reset(token)

    def _bound(self) -> RunBase:
        run = self._run.get()
        if run is None:
            raise ConfigError(
                "no corral run is bound to this tool call: wrap the graph's invocation in "
                "`with gate.bound(run):`"
            )
        return run

    def wrap_tool_call(self, request: ToolCallRequest, handler: Handler) -> Result:
        """``ToolNode(wrap_tool_call=...)``: the call under the bound run."""
        return govern(face(self._bound(), Run), request, handler, self._interrupts)

    async def awrap_tool_call(self, request: ToolCallRequest, handler: AsyncHandler) -> Result:
        """``ToolNode(awrap_tool_call=...)``: the call under the bound run."""
        return await agovern(face(self._bound(), AsyncRun), request, handler, self._interrupts)
