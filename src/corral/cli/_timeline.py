"""Every kind of trace event as one line people read: ``corral show``'s timeline.

:func:`describe` turns a timeline entry (see :mod:`corral.cli.show`) into
``(event, subject, detail, style)``. Each kind corral writes has its own wording; a
kind this version does not know (written by a newer one) is shown as ``key=value``
pairs, never as raw JSON. (The audit log's fleet records, ``kill_switch`` and
``idempotency_resolved``, belong to no run: ``corral audit export`` shows them.)

Imports only :mod:`corral.cli._format`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from corral.cli._format import STATUS_STYLE, cut, seconds

Line = tuple[str, str, str, str]
"""``(event, subject, detail, style)``."""


def describe(entry: Mapping[str, Any]) -> Line:
    """``(event, subject, detail, style)`` for one timeline entry, for people to read."""
    kind = str(entry["kind"])
    data: Mapping[str, Any] = entry["data"] if isinstance(entry["data"], Mapping) else {}
    denial = entry.get("denial")
    if denial is not None and kind not in ("run_end", "denied"):
        return _denial(kind, data, denial)
    handler = _KINDS.get(kind)
    if handler is not None:
        return handler(data, entry)
    return kind, "", pairs(data), ""


def _run_start(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    detail = f"policy {data.get('policy', '?')} ({data.get('mode', 'enforce')})"
    observed = data.get("observed")
    if observed and data.get("mode") == "mixed":
        detail += " · observing " + ", ".join(map(str, observed))
    return ("resumed" if data.get("resumed") else "start"), "", detail, "dim"


def _step(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    return "step", f"#{data.get('n', '?')}", "", ""


def _model_call(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    model = str(data.get("model") or "")
    outcome = data.get("outcome")
    if outcome in ("error", "invalid"):
        what = "failed" if outcome == "error" else "invalid response"
        return "model call", model, f"{what}: {cut(str(data.get('error') or ''), 160)}", "red"
    if outcome == "cancelled":
        return "model call", model, "cancelled", "red"
    parts = [
        f"{_int(data.get('input_tokens')):,} in / {_int(data.get('output_tokens')):,} out tokens"
    ]
    if data.get("max_tokens"):
        parts.append(f"max {_int(data['max_tokens']):,}")
    if data.get("finish_reason"):
        parts.append(f"finish {data['finish_reason']}")
    wants = data.get("tool_calls")
    if wants:
        parts.append("calls " + ", ".join(map(str, wants)))
    if outcome == "unsettled":
        parts.append("not settled: charged its reservation")
    elif outcome not in (None, "ok"):
        parts.append(str(outcome))
    return "model call", model, " · ".join(parts), "blue"


_TOOL_OUTCOMES = {
    "cached": "served from the run's read cache",
    "replayed": "the stored outcome replayed (idempotency key {key})",
    "not_executed": "not executed (the tool said so; its key released)",
    "cancelled": "cancelled in flight",
    "outcome_unknown": "outcome unknown (its process died mid-write; key {key})",
}


def _tool_call(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    outcome = str(data.get("outcome") or "")
    attempt = data.get("attempt")
    if outcome == "reconciled":
        found = "it had happened" if data.get("found") == "done" else "it had not happened"
        detail = f"reconciled: {found} (key {data.get('key')})"
    elif outcome in _TOOL_OUTCOMES:
        detail = _TOOL_OUTCOMES[outcome].format(key=data.get("key") or "-")
    else:
        detail = outcome.replace("_", " ")
    if isinstance(attempt, int) and attempt > 1:
        detail += f" (attempt {attempt})"
    problem = data.get("error") or data.get("problem")
    if problem:
        detail += f": {cut(str(problem), 160)}"
    style = {"ok": "green", "cached": "dim", "replayed": "dim", "reconciled": "dim"}
    return "tool call", str(data.get("tool") or ""), detail, style.get(outcome, "red")


def _denied(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    subject = str(data.get("tool") or data.get("model") or "")
    why = str(data.get("why") or "")
    detail = f"{why} ({_WHY[why]})" if why in _WHY else why
    if data.get("retry_after") is not None:
        detail += f", retry after {seconds(_float(data['retry_after']))}"
    if data.get("observed"):  # observe mode: the would_stop event that follows names the guard
        return "would deny", subject, f"{detail} (observe mode: not blocked)", "yellow"
    denial = entry.get("denial")
    guard = f"{denial['guard']}: " if isinstance(denial, Mapping) else ""
    if data.get("handed_back"):
        detail += " (handed back to the model)"
    return "denied", subject, guard + detail, "red"


_WHY = {
    "not_allowed": "not in the policy's allowlist",
    "unknown_tool": "no such tool",
    "argument_not_allowed": "an argument is outside the policy's constraints",
    "idempotency_mismatch": "idempotency key reused with other arguments",
    "missing_credential": "a credential the tool needs is missing",
    "degraded": "its breaker is open",
    "loop_detected": "the same call again (loop)",
}


def _denial(kind: str, data: Mapping[str, Any], denial: Mapping[str, Any]) -> Line:
    tool = str(denial.get("tool") or "")
    if kind == "would_stop":
        return "would stop", tool, f"{denial['guard']}: {data.get('text') or ''}", "yellow"
    detail = f"{denial['guard']}: {denial['why']}"
    if kind == "invalid_args":
        problems = "; ".join(map(str, data.get("problems") or []))
        detail = f"{denial['guard']}: " + cut(problems or "invalid arguments", 160)
    if kind == "approval":
        by = data.get("approver")
        why = data.get("error") or data.get("reason")
        detail = "approval " + ("failed" if data.get("error") else "denied")
        detail += (f" by {by}" if by else "") + (f": {why}" if why else "")
    if data.get("handed_back"):
        detail += " (handed back to the model)"
    return "denied", tool, detail, "red"


def _would_stop(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    # A would-be stop that is no refusal (a failure observe mode let pass).
    text = str(data.get("text") or data.get("reason") or "")
    return "would stop", str(data.get("tool") or ""), text, "yellow"


def _approval(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    waited = _float(data.get("waited"))
    by = data.get("approver") or "?"
    detail = f"approved by {by}" + (f" after {seconds(waited)}" if waited else "")
    if data.get("reason"):
        detail += f": {cut(str(data['reason']), 120)}"
    return "approval", str(data.get("tool") or ""), detail, "green"


def _approval_requested(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    detail = f"waiting for approval {data.get('approval_id')}"
    expires = data.get("expires")
    if isinstance(expires, int | float) and expires > 0:
        detail += f", expires {datetime.fromtimestamp(expires).astimezone():%H:%M:%S}"
    if data.get("reattached"):
        detail += " (asked before the run resumed)"
    return "approval asked", str(data.get("tool") or ""), detail, "yellow"


def _approval_decision(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    status = str(data.get("status") or "?")
    by = entry.get("actor")
    detail = f"approval {data.get('approval_id')} {status}" + (f" by {by}" if by else "")
    if data.get("reason"):
        detail += f": {cut(str(data['reason']), 120)}"
    style = {"approved": "green", "used": "green"}.get(status, "yellow")
    return "decision", str(data.get("tool") or ""), detail, style


def _authorized(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    detail = "write authorized, about to run"
    attempt = data.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        detail += f" (attempt {attempt})"
    if data.get("key"):
        detail += f" · idempotency key {cut(str(data['key']), 80)}"
    return "authorized", str(data.get("tool") or ""), detail, "dim"


def _breaker(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    state = str(data.get("state") or "?")
    if data.get("probe_lost"):
        detail = "the probe's process died: open for another cool-down"
    elif data.get("probe"):
        detail = "probe succeeded: closed" if state == "closed" else "probe failed: open again"
    elif state == "open":
        detail = "opened"
        if data.get("calls") is not None:
            detail += f": {data.get('failures')} of {data.get('calls')} calls failed"
        if data.get("cool_down") is not None:
            detail += f" · cool-down {seconds(_float(data['cool_down']))}"
    else:
        detail = state
    style = "green" if state == "closed" else "red"
    return "breaker", str(data.get("tool") or ""), detail, style


def _retry_budget(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    return "retry budget", str(data.get("tool") or ""), "exhausted: no retry", "yellow"


def _skipped(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    return "skipped", ", ".join(map(str, data.get("tools") or [])), "not run", "dim"


def _warning(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    return "warning", str(data.get("tool") or ""), str(data.get("message") or ""), "yellow"


def _interrupted(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    return "interrupted", "", str(data.get("why") or "the process died"), "magenta"


def _run_end(data: Mapping[str, Any], entry: Mapping[str, Any]) -> Line:
    reason = str(data.get("stop_reason") or "")
    stop = data.get("stop")
    detail = ""
    if isinstance(stop, Mapping):
        detail = str(stop.get("text") or "")
        if stop.get("message"):
            detail += f": {cut(str(stop['message']), 200)}"
    denial = entry.get("denial")
    if isinstance(denial, Mapping):
        detail = f"{denial['guard']}: {detail}"
    style = STATUS_STYLE.get(str(data.get("status") or ""), "")
    return "stop", reason, detail, f"bold {style}".strip()


_KINDS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], Line]] = {
    "run_start": _run_start,
    "step": _step,
    "model_call": _model_call,
    "tool_call": _tool_call,
    "denied": _denied,
    "would_stop": _would_stop,
    "approval": _approval,
    "approval_requested": _approval_requested,
    "approval_decision": _approval_decision,
    "authorized": _authorized,
    "breaker": _breaker,
    "retry_budget": _retry_budget,
    "skipped": _skipped,
    "warning": _warning,
    "interrupted": _interrupted,
    "run_end": _run_end,
}

#: The event kinds :func:`describe` has its own wording for.
KNOWN_KINDS = frozenset(_KINDS)


def pairs(data: Mapping[str, Any], limit: int = 160) -> str:
    """``key=value · key=value`` for an event of a kind without wording of its own: nested
    values flattened (``usage.steps=3``), lists joined, the whole cut to ``limit``."""
    out: list[str] = []

    def walk(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, Mapping) and depth < 2:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner, depth + 1)
        elif isinstance(value, list | tuple):
            out.append(f"{prefix}=" + ", ".join(_scalar(v) for v in value))
        else:
            out.append(f"{prefix}={_scalar(value)}")

    walk("", data, 0)
    return cut(" · ".join(out), limit)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Mapping | list | tuple):
        return f"({len(value)} items)"
    return cut(str(value), 60)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0
