"""Arguments: schema validation (errors go back to the model, a bounded number of times)
and value constraints (:mod:`corral.gateway.guards.constraints`: URL schemes and hosts, email
domains, list items, enumerations, ranges, patterns).

Constraints are checked on the validated values, so a value the schema coerced is
judged as the tool will receive it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from corral._simple_schema import certifier
from corral.exceptions import Stop, ToolRejected
from corral.gateway.guards.constraints import Violation, violation
from corral.gateway.guards.denial import count_mistake, deny
from corral.tools import ArgumentsInvalid, _jsonschema_problem

__all__ = [
    "Violation",
    "refuse",
    "validate",
    "violation",
]

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.state import Effective, RunState


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


def validate(call: Call) -> dict[str, Any]:
    """The call's validated arguments, a :class:`ToolRejected` for the model, or
    ``invalid_tool_args``."""
    core, eff, raw = call.run, call.eff, call.raw_args
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


def refuse(core: RunState, eff: Effective, problems: list[str]) -> NoReturn:
    """Hand invalid arguments back to the model (:class:`ToolRejected`), or, past the
    policy's bound on mistakes, stop the run with ``invalid_tool_args``."""
    name = eff.tool.name
    text = "; ".join(problems)
    core.events.add("invalid_args", tool=name, problems=problems, count=core.invalid_calls + 1)
    if count_mistake(core):
        raise core.stamp(
            Stop("invalid_tool_args", name, tool=name, message=text, extra={"problems": problems})
        ) from None
    raise ToolRejected(
        "invalid_tool_args",
        f"Invalid arguments for {name}: {text}. Fix them and call again.",
        tool=name,
    ) from None


#: id(schema) -> (the schema, its certifier, its validator once needed)
_POLICY_VALIDATORS: dict[int, tuple[Mapping[str, Any], Any, Any]] = {}


def _check_policy_schema(schema: Mapping[str, Any], args: Any) -> None:
    cached = _POLICY_VALIDATORS.get(id(schema))
    if cached is None or cached[0] is not schema:
        cached = _POLICY_VALIDATORS[id(schema)] = (schema, certifier(schema), None)
    if cached[1] is not None and cached[1](args):
        return
    validator = cached[2]
    if validator is None:
        import jsonschema  # once per schema: runs whose policy has no schemas never load it

        validator = jsonschema.validators.validator_for(schema)(schema)
        _POLICY_VALIDATORS[id(schema)] = (schema, cached[1], validator)
    errors = sorted(validator.iter_errors(args), key=lambda e: list(e.absolute_path))
    if errors:
        raise ArgumentsInvalid([_jsonschema_problem(e) for e in errors[:5]])
