"""What the remote client sends and how it reads the answers, with no I/O: the sync and
async clients (``sync.py``, ``aio.py``) differ only in how they wait for the server.

Imports the top-level modules, the meter's ``Usage`` and the policy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic_core import to_jsonable_python

from corral.budgets.meter import Usage
from corral.exceptions import ConfigError, Forbidden, InvalidKey, Stop, ToolRejected
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.stops import StopInfo
from corral.tools import Tool

#: Seconds a request may take by default.
TIMEOUT = 30.0
#: How long one authorize is held on the server for an approval's decision, and one wait
#: for it (seconds): short enough for any proxy between the client and the server.
HOLD = 20.0


def key_of(key: str | None) -> str:
    """The agent key: given, else ``CORRAL_KEY``."""
    found = key if key is not None else os.environ.get("CORRAL_KEY")
    if not found:
        raise ConfigError("the remote client needs an API key: key=... or CORRAL_KEY")
    return found


def start_body(
    policy: Policy | str | None, *, tenant: str | None, agent: str | None, task: str
) -> dict[str, Any]:
    """The request that starts a run."""
    body: dict[str, Any] = {"tenant": tenant, "agent": agent, "task": task}
    if isinstance(policy, Policy):
        body["policy_digest"] = policy.digest
    elif isinstance(policy, str) or policy is None:
        body["policy"] = policy
    else:
        raise ConfigError(f"policy must be a policy's name or a corral.Policy, got {policy!r}")
    return body


def unavailable(why: str) -> Stop:
    """The stop of a run whose server cannot be used: fail closed."""
    return Stop("control_plane_unavailable", "server", message=why)


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a successful answer; the error a refusal stands for, raised: a key or
    role problem as :class:`AccessError`, a request the server calls invalid or not found
    as :class:`ConfigError`, anything else (5xx, a reply that is not corral's) as the
    ``control_plane_unavailable`` stop."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_success and isinstance(body, dict):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = str(error.get("message")) if isinstance(error, dict) else response.text[:200]
    status = response.status_code
    if status == 401:
        raise InvalidKey(message)
    if status == 403:
        raise Forbidden(message)
    if status in (400, 404, 409, 413, 422) and code is not None:
        raise ConfigError(f"the server refused the request ({code}): {message}")
    raise unavailable(f"the server answered {status}: {message}")


def stop_of(data: Mapping[str, Any]) -> Stop:
    """A stop as the server sent it."""
    info = stop_info(data)
    return Stop.from_info(info)


def stop_info(data: Mapping[str, Any]) -> StopInfo:
    known = {"message", "tool", "scope", "limit", "observed", "retry_after"}
    extra = data.get("extra")
    return StopInfo(
        reason=data["reason"],
        detail=str(data.get("detail") or ""),
        retryable=bool(data.get("retryable")),
        extra=dict(extra) if isinstance(extra, Mapping) else {},
        **{k: data[k] for k in known if data.get(k) is not None},
    )


def result_of(data: Mapping[str, Any]) -> RunResult:
    """A run's result as the server sent it."""
    stop = data.get("stop")
    return RunResult(
        run_id=data["run_id"],
        status=data["status"],
        stop_reason=data["stop_reason"],
        answer=data.get("answer"),
        partial=data.get("partial"),
        usage=Usage.from_dict(data.get("usage") or {}),
        stop=stop_info(stop) if isinstance(stop, Mapping) else None,
        would_stop=tuple(stop_info(w) for w in data.get("would_stop") or ()),
        error=data.get("error"),
    )


@dataclass
class RemoteTicket:
    """An authorized tool call to execute here, then report (like :class:`corral.Ticket`):
    when ``replayed`` is true, do not execute it, use ``output``."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    timeout: float = 0.0
    credentials: Mapping[str, str] = field(default_factory=dict)
    replayed: bool = False
    output: Any = None
    id: str = ""
    reported: bool = False


def decided(answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """``answer`` if it lets the run go on; the refusal or stop it carries, raised."""
    decision = answer.get("decision")
    if decision == "stop":
        raise stop_of(answer["stop"])
    if decision == "rejected":
        raise ToolRejected(
            answer["reason"], str(answer.get("message") or ""), tool=str(answer.get("tool"))
        )
    return answer


def ticket_of(answer: Mapping[str, Any]) -> RemoteTicket:
    """The ticket an authorize answered with."""
    answer = decided(answer)
    if answer["decision"] == "replayed":
        return RemoteTicket(tool=answer["tool"], replayed=True, output=answer.get("output"))
    return RemoteTicket(
        tool=answer["tool"],
        arguments=dict(answer.get("arguments") or {}),
        idempotency_key=answer.get("idempotency_key"),
        timeout=float(answer.get("timeout") or 0.0),
        credentials=dict(answer.get("credentials") or {}),
        id=answer["ticket"],
    )


def outcome_body(
    output: Any = None, error: BaseException | None = None, timed_out: bool = False
) -> dict[str, Any]:
    """What a report sends: the output (as JSON), or the failure."""
    if error is not None or timed_out:
        text = "timed out" if error is None else f"{type(error).__name__}: {error}"
        return {"error": text[:20_000], "timed_out": timed_out}
    return {"output": output}


def tool_body(
    name: str, args: Any, idempotency_key: str | None, call_id: str | None
) -> dict[str, Any]:
    """An authorize request (held on the server up to :data:`HOLD` for an approval)."""
    return {
        "tool": name,
        "arguments": {} if args is None else args,
        "idempotency_key": idempotency_key,
        "call_id": call_id,
        "hold": HOLD,
    }


def pending_of(answer: Mapping[str, Any]) -> str | None:
    """The approval an authorize waits for (``pending``), else ``None``."""
    return str(answer["approval_id"]) if answer.get("decision") == "pending" else None


def model_body(
    model: str,
    messages: Any,
    tools: Any,
    max_tokens: int | None,
    input_tokens: int | None,
    provider: str | None,
) -> dict[str, Any]:
    """A model call's reservation request."""
    return {
        "model": model,
        "messages": list(messages),
        "tools": list(tools),
        "max_tokens": max_tokens,
        "input_tokens": input_tokens,
        "provider": provider,
    }


def local_tool(tools: Mapping[str, Tool], name: Any, *, async_ok: bool) -> Tool | None:
    """The function behind ``name`` in this process (``None`` when there is none: the
    server decides whether the call may go on before it is missed)."""
    tool = tools.get(name) if isinstance(name, str) else None
    if tool is not None and tool.context_param is not None:
        raise ConfigError(f"tool {name!r}: the remote client runs tools without a ToolContext")
    if tool is not None and tool.is_async and not async_ok:
        raise ConfigError(f"tool {name!r} is async: use corral.client.AsyncRun")
    return tool


def exit_body(
    exc: BaseException | None, stop: Stop | None
) -> tuple[dict[str, Any], bool, Stop | None]:
    """How a ``with`` block's exit ends the run: the end request, whether the exception
    is suppressed (a stop of the run, or a refusal it did not handle), and the run's stop."""
    if exc is None:
        return {}, False, stop
    if isinstance(exc, Stop):
        return {}, True, stop or exc
    if isinstance(exc, ToolRejected):
        refused = stop or Stop(exc.reason, exc.tool, tool=exc.tool, message=exc.message)
        return {}, True, refused
    return {"error": f"{type(exc).__name__}: {exc}"}, False, stop


def unended(run_id: str, stop: Stop) -> RunResult:
    """The result of a run the server could not end."""
    return RunResult(run_id=run_id, status="error", stop_reason=stop.reason, stop=stop.info)


def answer_text(answer: Any) -> str | None:
    return None if answer is None else (answer if isinstance(answer, str) else str(answer))


def jsonable(output: Any) -> Any:
    """A tool's output as JSON can carry it (models, dataclasses, dates as pydantic writes
    them; anything else as its text)."""
    return to_jsonable_python(output, fallback=str)


#: What a tool that ran past its ticket's timeout is reported as.
LATE = TimeoutError("the tool ran past its timeout")
