"""Arguments: schema validation (errors go back to the model, a bounded number of times)
and value constraints (:mod:`corral.gateway.guards.constraints`: URL schemes and hosts, email
domains, list items, enumerations, ranges, patterns).

Constraints are checked on the validated values, so a value the schema coerced is
judged as the tool will receive it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import jsonschema

from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway.guards.constraints import Violation, violation
from corral.gateway.guards.denial import count_mistake, deny
from corral.policy.schema import Policy
from corral.tools import ArgumentsInvalid, Tool, _jsonschema_problem

__all__ = [
    "Violation",
    "check_constraints",
    "constraint_problems",
    "refuse",
    "validate",
    "violation",
]

if TYPE_CHECKING:
    from corral.gateway.state import Effective, RunCore


def check_constraints(policy: Policy, tools: Mapping[str, Tool]) -> None:
    """Raise :class:`ConfigError` if a constraint names an argument its tool does not take.

    Such a constraint would never apply: a typo in a policy must not quietly switch a
    guard off. See :func:`constraint_problems`.
    """
    problems = constraint_problems(policy, tools)
    if problems:
        raise ConfigError(
            "the policy constrains arguments no tool takes:\n  " + "\n  ".join(problems)
        )


def constraint_problems(policy: Policy, tools: Mapping[str, Any]) -> list[str]:
    """One line per constraint naming an argument its registered tool does not declare.

    An argument is declared when the tool's argument schema names it under
    ``properties`` (also inside ``allOf``/``anyOf``/``oneOf``) or one of its
    ``patternProperties`` matches it -- also when the schema is open (pydantic's
    default, no ``additionalProperties: false``): a name nothing declares is a typo,
    not an argument. Tools that are not registered, or carry no schema, are skipped.
    """
    problems = []
    for name, spec in sorted(policy.tools.specs.items()):
        schema = getattr(tools.get(name), "args_schema", None)
        if not isinstance(schema, Mapping) or not spec.constraints:
            continue
        names, patterns = _declared(schema)
        for arg in sorted(spec.constraints):
            if arg in names or any(_search(p, arg) for p in patterns):
                continue
            takes = ", ".join(sorted(names)) if names else "none: its schema names no argument"
            problems.append(
                f"tools.specs.{name}.constraints.{arg}: {name} takes no argument "
                f"{arg!r} (it takes {takes})"
            )
    return problems


def _declared(schema: Mapping[str, Any]) -> tuple[set[str], list[str]]:
    """The argument names a schema declares, and its ``patternProperties`` patterns."""
    names: set[str] = set()
    patterns: list[str] = []
    for part in _branches(schema, 0):
        props = part.get("properties")
        if isinstance(props, Mapping):
            names.update(k for k in props if isinstance(k, str))
        more = part.get("patternProperties")
        if isinstance(more, Mapping):
            patterns += [k for k in more if isinstance(k, str)]
    return names, patterns


def _branches(schema: Mapping[str, Any], depth: int) -> Iterator[Mapping[str, Any]]:
    yield schema
    if depth >= 8:  # a tool's own schema; bounded all the same
        return
    for key in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                if isinstance(branch, Mapping):
                    yield from _branches(branch, depth + 1)


def _search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


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
