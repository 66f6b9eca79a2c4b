"""The agents' endpoints: a governed run driven over HTTP by an agent in any language.

The agent starts a run (under a named policy of the server's policy folder), then for each
tool call asks ``POST /v1/runs/{id}/tool-calls`` (the gateway up to execution: kill switch,
allowlist, arguments and constraints, loop detection, degrade, budgets, approval — the same
chain as ``Run.authorize`` in-process, since it *is* ``AsyncRun.authorize``), executes the
tool itself when allowed, and reports the outcome (output checks and hygiene, settlement,
audit); each model call of its own is reserved before and settled after. Every answer about
the run has a ``decision``: ``allow``, ``pending`` (an approval is needed: wait for it,
then ask again), ``replayed`` (do not execute: use ``output``), ``rejected`` (the run goes
on: show ``message`` to the model), ``ok``, or ``stop`` (the run has ended, ``stop`` says
why). HTTP errors are for requests that cannot be read or may not
be made.

Imports the loop's tickets, the server's runs, auth and errors.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from corral.controls.keys import Action, Principal
from corral.exceptions import Stop, ToolRejected
from corral.record.views import approval_row
from corral.server.auth import key_of
from corral.server.errors import REFUSALS, Conflict
from corral.server.runs import Held, Runs

router = APIRouter(prefix="/v1/runs", responses=REFUSALS)
Who = Annotated[Principal, Depends(key_of)]
Text = Annotated[str, Field(max_length=512)]
#: An error as the agent reports it (a tool's, a model call's, its own code's).
ErrorText = Annotated[str, Field(max_length=20_000)]


class Reported(Exception):
    """A failure as the agent reported it: a tool's, a model call's or its own code's."""


def _runs(request: Request) -> Runs:
    runs: Runs = request.app.state.runs
    return runs


def stop_answer(stop: Stop) -> dict[str, Any]:
    """The answer for a request that stopped its run."""
    return {"decision": "stop", "stop": {**stop.info.to_dict(), "retryable": stop.retryable}}


def rejected_answer(rejected: ToolRejected) -> dict[str, Any]:
    return {
        "decision": "rejected",
        "reason": rejected.reason,
        "tool": rejected.tool,
        "message": rejected.message,
    }


async def _governed(runs: Runs, held: Held, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``work``'s answer; a refusal the run survives as ``rejected``; a stop ends the run
    (recorded as its end, as leaving ``async with AsyncRun(...)`` would) as ``stop``."""
    try:
        return await work
    except ToolRejected as rejected:
        return rejected_answer(rejected)
    except Stop as stop:
        await runs.end(held, stop=stop)
        return stop_answer(stop)


# -- start --------------------------------------------------------------------------------
class StartRun(BaseModel):
    """A run to start: under a named policy of the server (``policy``), or — an admin's
    key only — one given whole (``policy_inline``)."""

    policy: Text | None = None
    policy_digest: Text | None = None
    policy_inline: dict[str, Any] | None = None
    tenant: Text | None = None
    agent: Text | None = None
    task: Annotated[str, Field(max_length=20_000)] = ""


@router.post("", status_code=201, summary="Start a governed run")
async def start(request: Request, who: Who, body: StartRun) -> dict[str, Any]:
    runs = _runs(request)
    policy = runs.policy(who, body.policy, body.policy_inline, digest=body.policy_digest)
    held = runs.start(who, policy, tenant=body.tenant, agent=body.agent, task=body.task)
    run = held.run
    return {
        "run_id": run.id,
        "tenant": held.tenant,
        "agent": body.agent,
        "policy_digest": policy.digest,
        "tools": [spec["name"] for spec in run.tool_specs("neutral")],
    }


@router.get("/{run_id}/tools", summary="The tools on offer now, as a model takes them")
async def tools(
    request: Request,
    who: Who,
    run_id: str,
    format: Literal["openai", "anthropic", "neutral"] = "openai",
) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.TOOLS_LIST)

    async def specs() -> dict[str, Any]:
        return {"decision": "ok", "tools": held.run.tool_specs(format)}

    return await _governed(runs, held, specs())


@router.post("/{run_id}/steps", summary="Count one step of the agent's loop")
async def step(request: Request, who: Who, run_id: str) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.TOOL_AUTHORIZE)

    async def counted() -> dict[str, Any]:
        await held.run.step()
        return {"decision": "ok", "usage": held.run.usage.to_dict()}

    return await _governed(runs, held, counted())


# -- tool calls -----------------------------------------------------------------------------
#: The longest an authorize may be held for an approval's decision (seconds).
MAX_HOLD = 60.0
#: How often a held authorize looks whether its call now waits for an approval.
LOOK_EVERY = 0.05


class ToolCall(BaseModel):
    """A tool call the agent wants to make. ``hold``: seconds to wait for an approval's
    decision before answering ``pending`` (0, the default: answer as soon as the request
    is filed)."""

    tool: Text
    arguments: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Text | None = None
    call_id: Text | None = None
    hold: Annotated[float, Field(ge=0, le=MAX_HOLD)] = 0.0

    def key(self) -> str:
        """The call's identity: the same call asked again joins the one in flight."""
        return json.dumps(
            [self.tool, self.arguments, self.idempotency_key, self.call_id],
            sort_keys=True,
            default=str,
        )


@router.post(
    "/{run_id}/tool-calls",
    summary="Authorize a tool call (the gateway up to execution)",
    description="A write that needs approval answers `pending` with the approval's id once the "
    "request is filed (or after `hold` seconds): wait for the decision "
    "(`GET /v1/approvals/{id}/wait`, or the stream), then ask again with the same call — it "
    "joins the one in flight and answers `allow` (or the stop).",
)
async def authorize(request: Request, who: Who, run_id: str, body: ToolCall) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.TOOL_AUTHORIZE)
    key = body.key()
    task = held.inflight.get(key)
    if task is None:
        task = asyncio.create_task(_governed(runs, held, _authorized(runs, held, body)))
        held.inflight[key] = task
    hold_until = time.monotonic() + body.hold
    while True:
        done, _ = await asyncio.wait({task}, timeout=LOOK_EVERY)
        if done:
            held.inflight.pop(key, None)
            return task.result()
        if time.monotonic() >= hold_until:
            waiting = await _pending_approval(runs, held, body.tool)
            if waiting is not None:
                return waiting


async def _authorized(runs: Runs, held: Held, body: ToolCall) -> dict[str, Any]:
    ticket = await held.run.authorize(
        body.tool,
        body.arguments,
        idempotency_key=body.idempotency_key,
        call_id=body.call_id,
    )
    if ticket.replayed:
        return {"decision": "replayed", "tool": body.tool, "output": ticket.output}
    ticket_id = runs.keep(held.tickets, ticket, "tkt_")
    answer: dict[str, Any] = {
        "decision": "allow",
        "ticket": ticket_id,
        "tool": ticket.tool,
        "arguments": dict(ticket.arguments),
        "idempotency_key": ticket.idempotency_key,
        "timeout": ticket.timeout,
    }
    context = ticket.context
    if context is not None and context.credentials:
        answer["credentials"] = dict(context.credentials)  # for the executor only
    return answer


async def _pending_approval(runs: Runs, held: Held, tool: str) -> dict[str, Any] | None:
    """The ``pending`` answer for a call of ``tool`` waiting for an approval in this run,
    or ``None`` when it waits for nothing of the kind (it is still on its way)."""
    found = await run_in_threadpool(runs.store.list_approvals, status="pending", run_id=held.run.id)
    mine = [a for a in found if a.tool == tool]
    if not mine:
        return None
    record = max(mine, key=lambda a: a.created)
    return {
        "decision": "pending",
        "tool": tool,
        "approval_id": record.id,
        "expires": approval_row(record)["expires"],
    }


class Outcome(BaseModel):
    """What the tool did: its ``output``, or the ``error`` it raised (or that it timed
    out)."""

    output: Any = None
    error: ErrorText | None = None
    timed_out: bool = False


@router.post("/{run_id}/tool-calls/{ticket_id}/report", summary="Report a tool call's outcome")
async def report(
    request: Request, who: Who, run_id: str, ticket_id: str, body: Outcome
) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.TOOL_REPORT)
    ticket = runs.take(held.tickets, ticket_id, "ticket", run_id)

    async def reported() -> dict[str, Any]:
        if body.error is not None or body.timed_out:
            failure = Reported(body.error or "timed out")
            observation = await held.run.report_failure(ticket, failure, timed_out=body.timed_out)
        else:
            observation = await held.run.report(ticket, body.output)
        return {"decision": "ok", "observation": observation}

    return await _governed(runs, held, reported())


# -- model calls ----------------------------------------------------------------------------
class ModelCallIn(BaseModel):
    """A model call the agent is about to make: the model's name, and either the input's
    token count or the messages and tool specs to count it from."""

    model: Text
    input_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    max_tokens: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    provider: Text | None = None


@router.post("/{run_id}/model-calls", summary="Reserve a model call (tokens and USD, before it)")
async def model_call(request: Request, who: Who, run_id: str, body: ModelCallIn) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.MODEL_RESERVE)

    async def reserved() -> dict[str, Any]:
        mc = held.run.model_call(
            model=body.model,
            messages=body.messages,
            tools=body.tools,
            max_tokens=body.max_tokens,
            input_tokens=body.input_tokens,
            provider=body.provider,
        )
        call_id = runs.keep(held.model_calls, mc, "mdl_")
        return {"decision": "allow", "model_call": call_id, "max_tokens": mc.max_tokens}

    return await _governed(runs, held, reserved())


class Settlement(BaseModel):
    """What the provider reported the call used, or the error the call ended with."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    error: ErrorText | None = None


@router.post("/{run_id}/model-calls/{call_id}/settle", summary="Settle a model call")
async def settle(
    request: Request, who: Who, run_id: str, call_id: str, body: Settlement
) -> dict[str, Any]:
    runs = _runs(request)
    held = runs.get(who, run_id, Action.MODEL_SETTLE)
    mc = runs.take(held.model_calls, call_id, "model call", run_id)

    async def settled() -> dict[str, Any]:
        if body.error is not None:
            await mc.__aexit__(Reported, Reported(body.error), None)
        elif body.input_tokens is None or body.output_tokens is None:
            await mc.__aexit__(None, None, None)  # usage unknown: the worst case is charged
        else:
            with mc:
                mc.settle(input_tokens=body.input_tokens, output_tokens=body.output_tokens)
        return {"decision": "ok", "usage": held.run.usage.to_dict()}

    return await _governed(runs, held, settled())


# -- end ------------------------------------------------------------------------------------
class EndRun(BaseModel):
    """The run's answer; or the error the agent's own code failed with (``agent_error``)."""

    answer: Annotated[str, Field(max_length=1_000_000)] | None = None
    error: ErrorText | None = None


@router.post("/{run_id}/end", summary="End the run with its answer")
async def end(request: Request, who: Who, run_id: str, body: EndRun) -> dict[str, Any]:
    runs = _runs(request)
    try:
        held = runs.get(who, run_id, Action.RUN_END)
    except Conflict as conflict:
        ended = runs.ended(run_id)
        if conflict.code != "run_ended" or ended is None:
            raise
        return {"result": ended.to_dict()}  # ending twice answers the same
    failure = None if body.error is None else Reported(body.error)
    result = await runs.end(held, answer=body.answer, failure=failure)
    return {"result": result.to_dict()}
