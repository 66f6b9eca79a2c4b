"""Arguments: schema validation (errors go back to the model, a bounded number of times)
and value constraints (allowed URL schemes and hosts, enumerations, ranges, patterns).

Constraints are checked on the validated values, so a value the schema coerced is
judged as the tool will receive it. URLs are judged strictly: anything a client
could read two ways (whitespace or control characters, ``@`` in the authority,
non-ASCII or percent-encoded host names, empty labels) is refused rather than
guessed at; an allowed host matches exactly (case-insensitively, one trailing dot
ignored) or, for ``*.example.com``, as a proper subdomain.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn
from urllib.parse import urlsplit

import jsonschema

from .._safe import shown
from ..exceptions import ConfigError, Stop, ToolRejected
from ..patterns import MAX_MATCH_CHARS
from ..policy import ArgConstraint, Policy
from ..tools import ArgumentsInvalid, Tool, _jsonschema_problem
from .denial import count_mistake, deny, one_line

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore


def check_constraints(policy: Policy, tools: Mapping[str, Tool]) -> None:
    """Raise :class:`ConfigError` if a constraint names an argument its tool does not take.

    Such a constraint would never apply: a typo in a policy must not quietly switch a
    guard off. Tools whose schema admits any argument name are not judged.
    """
    problems = []
    for name, spec in sorted(policy.tools.specs.items()):
        tool = tools.get(name)
        if tool is None or not spec.constraints:
            continue
        props = tool.args_schema.get("properties")
        closed = (
            tool.args_schema.get("additionalProperties") is False or tool._args_model is not None
        )
        if not isinstance(props, Mapping) or not closed:
            continue
        for arg in sorted(set(spec.constraints) - set(props)):
            takes = ", ".join(sorted(props)) or "no arguments"
            problems.append(
                f"tools.specs.{name}.constraints.{arg}: {name} takes no argument "
                f"{arg!r} (it takes {takes})"
            )
    if problems:
        raise ConfigError(
            "the policy constrains arguments no tool takes:\n  " + "\n  ".join(problems)
        )


def _parse(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise ArgumentsInvalid(
                [f"arguments are not valid JSON ({exc.msg} at {exc.pos})"]
            ) from None
        except RecursionError:
            raise ArgumentsInvalid(["arguments are nested too deeply"]) from None
        except ValueError as exc:  # a number past Python's 4,300-digit conversion limit
            raise ArgumentsInvalid([f"arguments are not valid JSON ({exc})"]) from None
    if type(raw) is dict:
        return raw  # validation reads it and returns a new dict: no copy needed here
    return dict(raw) if isinstance(raw, Mapping) else raw


def validate(core: RunCore, eff: Effective, raw: Any) -> dict[str, Any]:
    """Validated arguments, a :class:`ToolRejected` for the model, or ``invalid_tool_args``."""
    name = eff.tool.name
    try:
        parsed = _parse(raw)
        args = eff.tool.validate_args(parsed)
        if eff.policy_args_schema is not None:
            # The policy's schema narrows what the code accepts: both must pass.
            _check_policy_schema(eff.policy_args_schema, parsed)
    except ArgumentsInvalid as exc:
        refuse(core, eff, exc.problems)
    except RecursionError:  # nested too deeply for the validators: the model can fix it
        refuse(core, eff, ["arguments are nested too deeply"])
    for arg, rule in eff.constraints.items():
        if arg in args:
            problem = violation(args[arg], rule)
            if problem is not None:
                deny(
                    core,
                    name,
                    "argument_not_allowed",
                    f"{name}: argument {arg!r} {problem.message}",
                    extra={"argument": arg, "note": problem.note},
                )
    return args


def refuse(core: RunCore, eff: Effective, problems: list[str]) -> NoReturn:
    """Hand invalid arguments back to the model (:class:`ToolRejected`), or, past the
    policy's bound on mistakes, stop the run with ``invalid_tool_args``."""
    name = eff.tool.name
    text = "; ".join(problems)
    core.event("invalid_args", tool=name, problems=problems, count=core.invalid_calls + 1)
    if count_mistake(core):
        raise core.stamp(
            Stop("invalid_tool_args", name, tool=name, message=text, extra={"problems": problems})
        ) from None
    raise ToolRejected(
        "invalid_tool_args",
        f"Invalid arguments for {name}: {text}. Fix them and call again.",
        tool=name,
    ) from None


_POLICY_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any]] = {}


def _check_policy_schema(schema: Mapping[str, Any], args: Any) -> None:
    cached = _POLICY_VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        validator = jsonschema.validators.validator_for(schema)(schema)
        cached = _POLICY_VALIDATORS[id(schema)] = (schema, validator)
    errors = sorted(cached[1].iter_errors(args), key=lambda e: list(e.absolute_path))
    if errors:
        raise ArgumentsInvalid([_jsonschema_problem(e) for e in errors[:5]])


# A host name as a client sends it: ASCII labels of letters, digits, '-' and '_'.
_HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\Z")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")


def _host_ok(host: str, allowed: list[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _in_enum(value: Any, allowed: list[Any]) -> bool:
    # ``True == 1`` in Python; in an enumeration a boolean and a number are different values.
    return any(
        value == item and isinstance(value, bool) == isinstance(item, bool) for item in allowed
    )


class Violation(NamedTuple):
    """Why a value breaks a constraint: the full ``message`` (for the model and the log)
    and a short ``note`` for the stop's one-line text (``host evil.com``)."""

    message: str
    note: str


def _url_problem(value: Any, rule: ArgConstraint) -> Violation | None:
    if not isinstance(value, str):
        if type(value).__name__ not in ("Url", "AnyUrl", "HttpUrl", "AnyHttpUrl"):
            return Violation("must be a URL", "not a URL")
        value = str(value)  # a pydantic URL type: judge its text form
    if _UNSAFE.search(value):
        return Violation(
            "must not contain spaces, control characters or backslashes", "unsafe characters"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return Violation("is not a valid URL", "invalid URL")
    scheme = parts.scheme.lower()
    if rule.schemes is not None and scheme not in rule.schemes:
        return Violation(
            f"uses scheme {parts.scheme!r}; allowed: {', '.join(rule.schemes)}",
            f"scheme {one_line(parts.scheme)}",
        )
    if "@" in parts.netloc:
        return Violation("must not carry credentials (user@host)", "credentials in the URL")
    if rule.hosts is None:
        return None
    host = (parts.hostname or "").lower()
    host = host[:-1] if host.endswith(".") else host
    if not host:
        return Violation("has no host", "no host")
    if parts.netloc.startswith("[") or not _HOST.match(host):
        return Violation(
            f"points to host {host!r}, which is not a plain ASCII host name",
            f"host {one_line(host)}",
        )
    if port == 0:
        return Violation("is not a valid URL (port 0)", "invalid URL")
    if not _host_ok(host, rule.hosts):
        return Violation(
            f"points to host {host!r}, which is not in the allowed hosts", f"host {one_line(host)}"
        )
    return None


def violation(value: Any, rule: ArgConstraint) -> Violation | None:
    """Why ``value`` breaks ``rule``, or ``None``."""
    if rule.enum is not None and not _in_enum(value, rule.enum):
        return Violation(
            f"must be one of {shown(rule.enum, 200)}, got {shown(value)}", "not an allowed value"
        )
    if rule.min is not None or rule.max is not None:
        if not _number(value) or (isinstance(value, float | Decimal) and not math.isfinite(value)):
            return Violation(f"must be a finite number, got {shown(value)}", "not a finite number")
        if rule.min is not None and value < rule.min:
            return Violation(f"must be >= {rule.min:g}, got {shown(value)}", "below the minimum")
        if rule.max is not None and value > rule.max:
            return Violation(f"must be <= {rule.max:g}, got {shown(value)}", "above the maximum")
    if rule.max_length is not None:
        if not isinstance(value, str | list | tuple | dict):
            return Violation(
                f"must be a string or a list, got {type(value).__name__}", "not a string or list"
            )
        if len(value) > rule.max_length:
            return Violation(
                f"must be at most {rule.max_length} long, got {len(value)}", "too long"
            )
    if rule.pattern is not None:
        if not isinstance(value, str):
            return Violation(
                f"must be a string matching {rule.pattern!r}, got {type(value).__name__}",
                "does not match the pattern",
            )
        if len(value) > MAX_MATCH_CHARS:
            # Bounded input: a pattern's time grows with the text it runs on.
            return Violation(
                f"is {len(value)} characters, longer than a pattern is matched on "
                f"({MAX_MATCH_CHARS})",
                "too long to match",
            )
        if not re.fullmatch(rule.pattern, value):
            return Violation(f"must match {rule.pattern!r}", "does not match the pattern")
    if rule.schemes is not None or rule.hosts is not None:
        return _url_problem(value, rule)
    return None
