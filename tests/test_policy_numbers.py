"""Every number in a policy is read the same way: numbers are numbers, text and booleans
are mistakes (``max_usd: "2"`` as much as ``max_seconds: "90"``), whole-number fields
take whole numbers only."""

from __future__ import annotations

import types
import typing
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from corral.exceptions import PolicyError
from corral.policy.schema import Policy

#: Every numeric field of the policy: a path (``*`` a name of the user's, ``[]`` an entry
#: of a list) and its kind: ``int`` (whole numbers), ``float`` (seconds, ratios, bounds)
#: or ``usd`` (exact decimal amounts).
FIELDS: dict[str, str] = {
    "budgets.max_steps": "int",
    "budgets.max_seconds": "float",
    "budgets.max_tool_calls": "int",
    "budgets.max_tokens": "int",
    "budgets.max_input_tokens": "int",
    "budgets.max_output_tokens": "int",
    "budgets.max_usd": "usd",
    "tools.max_invalid_args": "int",
    "tools.specs.*.cost_usd": "usd",
    "tools.specs.*.timeout_seconds": "float",
    "tools.specs.*.retries": "int",
    "tools.specs.*.max_output_chars": "int",
    "tools.specs.*.cache_ttl_seconds": "float",
    "tools.specs.*.max_calls": "int",
    "tools.specs.*.constraints.*.min": "float",
    "tools.specs.*.constraints.*.max": "float",
    "tools.specs.*.constraints.*.max_length": "int",
    "tools.specs.*.constraints.*.max_items": "int",
    "writes.approval_timeout_seconds": "float",
    "approvals.notify_timeout_seconds": "float",
    "kill_switch.expensive_cost_usd": "usd",
    "limits[].max_usd": "usd",
    "limits[].max_calls": "int",
    "degrade.failure_rate": "float",
    "degrade.min_calls": "int",
    "degrade.window_seconds": "float",
    "degrade.cool_down_seconds": "float",
    "degrade.retry_budget_ratio": "float",
    "degrade.retry_budget_floor": "int",
    "loops.repeats": "int",
    "loops.window": "int",
    "observations.max_chars": "int",
    "context.max_chars": "int",
    "recording.max_bytes": "int",
    "models.max_output_tokens": "int",
    "models.timeout_seconds": "float",
    "models.prices.*.input_usd_per_mtok": "usd",
    "models.prices.*.output_usd_per_mtok": "usd",
    "monitoring.thresholds.tool_calls_per_run": "float",
    "monitoring.thresholds.tokens_per_request": "float",
    "monitoring.thresholds.stop_reason": "float",
    "monitoring.thresholds.latency_p95": "float",
    "monitoring.thresholds.spend_per_run": "float",
    "monitoring.min_runs": "int",
}

#: Values each kind takes, and what it reads them as.
ACCEPTED: dict[str, list[tuple[Any, Any]]] = {
    "int": [(4, 4), (5, 5)],
    "float": [(1, 1.0), (0.5, 0.5)],
    "usd": [(1, Decimal(1)), (0.5, Decimal("0.5")), (Decimal("0.10"), Decimal("0.10"))],
}
#: Values each kind refuses: text (even of a number), booleans, and fractions for counts.
REFUSED: dict[str, list[Any]] = {
    "int": ["3", "three", True, False, 2.5, 3.0],
    "float": ["0.5", "90", "soon", True, False],
    "usd": ["0.5", "2", " 2", "two", True, False],
}


def policy_with(path: str, value: Any) -> dict[str, Any]:
    """The smallest policy setting ``path`` to ``value`` (and what the entry needs)."""
    if path.startswith("limits[]."):
        entry = {"per": "tenant", "window": "1d", path.split(".", 1)[1]: value}
        return {"limits": [entry]}
    parts = path.split(".")
    names = iter(["x", "q"]) if parts[0] == "tools" else iter(["m"])
    data: dict[str, Any] = {}
    node = data
    for part in parts[:-1]:
        node = node.setdefault(next(names) if part == "*" else part, {})
    node[parts[-1]] = value
    if parts[:2] == ["models", "prices"]:  # a price names both rates
        for rate in ("input_usd_per_mtok", "output_usd_per_mtok"):
            node.setdefault(rate, 0)
    return data


def read_back(policy: Policy, path: str) -> Any:
    """The value ``policy`` holds at ``path``."""
    if path.startswith("limits[]."):
        return getattr(policy.limits[0], path.split(".", 1)[1])
    names = iter(["x", "q"]) if path.startswith("tools") else iter(["m"])
    node: Any = policy
    for part in path.split("."):
        key = next(names) if part == "*" else part
        node = node[key] if isinstance(node, dict) else getattr(node, key)
    return node


CASES_OK = [(p, given, read) for p, kind in FIELDS.items() for given, read in ACCEPTED[kind]]
CASES_BAD = [(p, bad) for p, kind in FIELDS.items() for bad in REFUSED[kind]]


@pytest.mark.parametrize(("path", "given", "read"), CASES_OK)
def test_a_number_is_read_as_its_field_says(path: str, given: Any, read: Any) -> None:
    """Each numeric field takes numbers of its kind and holds them with their exact value."""
    value = read_back(Policy.from_dict(policy_with(path, given)), path)
    assert value == read and type(value) is type(read)


@pytest.mark.parametrize(("path", "bad"), CASES_BAD)
def test_text_booleans_and_fractions_are_refused_in_every_numeric_field(
    path: str, bad: Any
) -> None:
    """No numeric field reads text or a boolean, and no count a fraction: one line naming
    the field and the value, and for a number in quotes how to write it."""
    with pytest.raises(PolicyError) as refused:
        Policy.from_dict(policy_with(path, bad))
    (line,) = refused.value.problems
    shown = path.replace("limits[]", "limits[0]").replace("*", "x", 1).replace("*", "q")
    if path.startswith("models.prices"):
        shown = path.replace("*", "m")
    assert line.startswith(f"{shown}: must be ")
    if isinstance(bad, bool):
        assert line.endswith(f"got {'true' if bad else 'false'}")
    elif isinstance(bad, str) and bad.strip()[0].isdigit():
        assert line.endswith(f"(text, not a number: write {bad.strip()} without quotes)")


def test_the_table_covers_every_numeric_field_of_the_policy() -> None:
    """A numeric field added to the policy must be added to FIELDS (and so tested)."""
    assert set(numeric_paths(Policy)) == set(FIELDS)


def test_quoted_usd_in_yaml_is_refused_and_exponents_are_numbers() -> None:
    """In YAML, ``max_usd: "2"`` is text (refused); ``1e-3`` is a number, as YAML 1.2 reads it."""
    with pytest.raises(PolicyError, match=r"budgets\.max_usd: must be a number, got '2'"):
        Policy.from_yaml('budgets:\n  max_usd: "2"\n')
    policy = Policy.from_yaml("budgets:\n  max_usd: 1e-3\n  max_seconds: 2E2\n")
    assert (policy.budgets.max_usd, policy.budgets.max_seconds) == (Decimal("0.001"), 200.0)


def numeric_paths(
    model: type[BaseModel], prefix: str = "", within: tuple[type[BaseModel], ...] = ()
) -> list[str]:
    """Paths of the int, float and Decimal fields of ``model``, nested models included
    (a model nested in itself, a constraint's ``items``, has the same fields: once)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        annotation, suffix = _unwrap(field.annotation)
        path = f"{prefix}{name}{suffix}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in (model, *within):
                out += numeric_paths(annotation, path + ".", (*within, model))
        elif annotation in (int, float, Decimal):
            out.append(path)
    return out


def _unwrap(annotation: Any) -> tuple[Any, str]:
    """The field's innermost type, and how the path goes through containers."""
    suffix = ""
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated or (
            origin in (typing.Union, types.UnionType) and len(args) == 1
        ):
            annotation = args[0]
        elif origin is dict:
            annotation, suffix = args[1], suffix + ".*"
        elif origin is list:
            annotation, suffix = args[0], suffix + "[]"
        else:
            return annotation, suffix
