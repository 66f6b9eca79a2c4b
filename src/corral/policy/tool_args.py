"""Constraints that name arguments their tools do not take: checked when a run starts
(:class:`~corral.ConfigError`) and by ``corral check``, because such a constraint would
never apply and a typo must not quietly switch a guard off.

Imports only the policy schema and the tool declarations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from corral.exceptions import ConfigError
from corral.policy.schema import Policy


def check_constraints(policy: Policy, tools: Mapping[str, Any]) -> None:
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
