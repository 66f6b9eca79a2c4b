"""Arguments: schema validation (errors go back to the model, a bounded number of times)
and value constraints (allowed URL schemes and hosts, enumerations, ranges, patterns)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..exceptions import Stop, ToolRejected
from ..policy import ArgConstraint
from ..tools import ArgumentsInvalid

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore


def _parse(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ArgumentsInvalid([f"arguments are not valid JSON ({exc.msg} at {exc.pos})"]) from None
    return dict(raw) if isinstance(raw, Mapping) else raw


def validate(core: RunCore, eff: Effective, raw: Any) -> dict[str, Any]:
    """Validated arguments, a :class:`ToolRejected` for the model, or ``invalid_tool_args``."""
    name = eff.tool.name
    try:
        args = eff.tool.validate_args(_parse(raw))
    except ArgumentsInvalid as exc:
        core.invalid_calls += 1
        problems = "; ".join(exc.problems)
        core.event("invalid_args", tool=name, problems=exc.problems, count=core.invalid_calls)
        if core.invalid_calls > core.policy.tools.max_invalid_args:
            raise core.stamp(
                Stop("invalid_tool_args", name, tool=name, message=problems,
                     extra={"problems": exc.problems})
            ) from None
        raise ToolRejected(
            "invalid_tool_args",
            f"Invalid arguments for {name}: {problems}. Fix them and call again.",
            tool=name,
        ) from None
    for arg, rule in eff.constraints.items():
        if arg in args:
            problem = violation(args[arg], rule)
            if problem:
                core.event("denied", tool=name, why="argument_not_allowed", argument=arg)
                core.deny(
                    Stop("tool_denied", "argument_not_allowed", tool=name,
                         message=f"{name}: argument {arg!r} {problem}",
                         extra={"argument": arg})
                )
    return args


def _host_ok(host: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def violation(value: Any, rule: ArgConstraint) -> str | None:
    """Why ``value`` breaks ``rule``, or ``None``."""
    if rule.enum is not None and value not in rule.enum:
        return f"must be one of {rule.enum!r}, got {value!r}"
    if rule.min is not None or rule.max is not None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return f"must be a number, got {value!r}"
        if rule.min is not None and value < rule.min:
            return f"must be >= {rule.min:g}, got {value!r}"
        if rule.max is not None and value > rule.max:
            return f"must be <= {rule.max:g}, got {value!r}"
    if rule.max_length is not None and isinstance(value, str | list) and len(value) > rule.max_length:
        return f"must be at most {rule.max_length} long, got {len(value)}"
    if rule.pattern is not None and (not isinstance(value, str) or not re.fullmatch(rule.pattern, value)):
        return f"must match {rule.pattern!r}"
    if rule.schemes is not None or rule.hosts is not None:
        if not isinstance(value, str):
            return "must be a URL"
        try:
            parts = urlsplit(value.strip())
            host = (parts.hostname or "").rstrip(".")
            _ = parts.port
        except ValueError:
            return "is not a valid URL"
        if rule.schemes is not None and parts.scheme.lower() not in rule.schemes:
            return f"uses scheme {parts.scheme!r}; allowed: {', '.join(rule.schemes)}"
        if parts.username or parts.password:
            return "must not carry credentials"
        if rule.hosts is not None and (not host or not _host_ok(host, rule.hosts)):
            return f"points to host {host!r}, which is not in the allowed hosts"
    return None
