"""Turn pydantic validation errors into one plain line per problem.

Each line is ``path: message``; the message names what is expected and the value
found, written as in the config file (``true``, ``null``, ``'text'``).
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from annotated_types import Ge, Gt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from corral._safe import shown


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int) and not isinstance(item, bool):
            parts.append(f"[{item}]")
        else:
            name = str(item)
            # A key with a newline or other control character is quoted: one line per problem.
            parts.append(("." if parts else "") + (name if name.isprintable() else repr(name)))
    return "".join(parts) or "(top level)"


def render_value(value: Any) -> str:
    """A value as a config file would spell it, cut to 60 characters."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, datetime.date):
        text = value.isoformat()
    else:
        text = shown(value, 60)  # never raises: a hostile or huge value is named, not shown
    return text if len(text) <= 60 else text[:57] + "..."


_got = render_value


def number_hint(value: Any) -> str:
    """For a number written as text (``"90"``), how to write it: numbers are never read
    from strings, in any field (a quoted value is more often a template gone wrong than
    a choice)."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    return f" (text, not a number: write {value.strip()} without quotes)"


# -- where an error is: the annotation and constraints of the field it concerns --------------


def _unwrap(annotation: Any, metadata: list[Any]) -> Any:
    """Strip ``Annotated`` (collecting its metadata) and ``X | None``."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            args = typing.get_args(annotation)
            annotation = args[0]
            metadata.extend(args[1:])
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _locate(root: Any, loc: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """The annotation at ``loc`` below ``root`` (``None`` when unknown) and its constraints."""
    annotation: Any = root
    metadata: list[Any] = []
    for item in loc:
        metadata = []
        annotation = _unwrap(annotation, metadata)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(item) if isinstance(item, str) else None
            if field is None:
                return None, []
            annotation = field.annotation
            metadata = list(field.metadata)
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        elif origin is list:
            annotation = typing.get_args(annotation)[0]
        else:
            return None, []
    return _unwrap(annotation, metadata), metadata


def _bounds(metadata: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.update(_bounds(item.metadata))
        elif isinstance(item, Gt):
            out["gt"] = item.gt
        elif isinstance(item, Ge):
            out["ge"] = item.ge
    return out


def _known_keys(root: Any, loc: tuple[Any, ...]) -> list[str]:
    model, _ = _locate(root, loc[:-1])
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _expected_number(root: Any, loc: tuple[Any, ...], value: Any) -> str:
    """'a positive integer', 'a number', ... as the field at ``loc`` requires."""
    annotation, metadata = _locate(root, loc)
    if annotation is None:
        integer = isinstance(value, int) and not isinstance(value, bool)
    else:
        integer = annotation is int
    noun = "integer" if integer else "number"
    bounds = _bounds(metadata)
    if bounds.get("gt") == 0:
        return f"a positive {noun}"
    if bounds.get("ge") == 0:
        return f"{'an' if integer else 'a'} {noun}, zero or more"
    return f"{'an' if integer else 'a'} {noun}"


def _did_you_mean(word: Any, choices: Iterable[Any]) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- one message per error kind -----------------------------------------------------------------


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal``, also as one member of a union (``mode``: a name or a
    mapping)."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            choices = _literal_choices(_unwrap(member, []))
            if choices:
                return choices
    return ()


def _message(err: Any, root: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _known_keys(root, loc)
        hint = _did_you_mean(loc[-1] if loc else "", known) or (
            f" (known: {', '.join(known)})" if known else ""
        )
        return f"unknown key{hint}"
    if kind == "missing":
        return "is required"
    if kind in ("greater_than", "greater_than_equal"):
        bound = ctx.get("gt", ctx.get("ge"))
        if bound == 0:
            if kind == "greater_than":
                return f"must be {_expected_number(root, loc, value)}, got {_got(value)}"
            return f"must be zero or more, got {_got(value)}"
        op = ">" if kind == "greater_than" else ">="
        return f"must be {op} {bound}, got {_got(value)}"
    if kind in ("less_than", "less_than_equal"):
        op, bound = ("<", ctx.get("lt")) if kind == "less_than" else ("<=", ctx.get("le"))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # 1, as the policy's documentation writes it, not 1.0
        return f"must be {op} {bound}, got {_got(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float", "float_type", "float_parsing"):
        expected = _expected_number(root, loc, value)
        return f"must be {expected}, got {_got(value)}{number_hint(value)}"
    if kind in ("decimal_type", "decimal_parsing"):
        return f"must be a number, got {_got(value)}"
    if kind in ("finite_number",):
        return f"must be a finite number, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {_got(value)}"
    if kind in ("string_type",):
        return f"must be a string, got {_got(value)}"
    if kind in ("list_type",):
        return f"must be a list, got {_got(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        hint = " (write {} for an empty section)" if value is None else ""
        return f"must be a mapping, got {_got(value)}{hint}"
    if kind == "literal_error":
        annotation, _ = _locate(root, loc)
        choices = _literal_choices(annotation)
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {ctx.get('expected', '?')}, got {_got(value)}{hint}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    if kind == "invalid_key":
        return f"keys must be strings, got {_got(value)}"
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_got(value)}"


# pydantic adds markers to locations: "[key]", "function-after[...]", "lax-or-strict[...]",
# and the union tags policy.py writes in brackets ("[whole]"). A key of the user's own that
# holds a bracket ("[", "a[0") is a key, not a marker.
_MARKER = re.compile(r"\[key\]|\[[a-z_]+\]|function-before|[a-z]+(?:-[a-z]+)+\[.*\]", re.S)


def _clean(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in loc if not (isinstance(p, str) and _MARKER.fullmatch(p)))


def _document_order(data: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where ``loc`` is in the input, as positions at each level (dicts keep file order)."""
    out: list[int] = []
    node = data
    for item in loc:
        if isinstance(node, dict) and item in node:
            out.append(list(node).index(item))
            node = node[item]
        elif isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
            out.append(item)
            node = node[item]
        else:
            out.append(-1)  # the key itself is the problem: report it with its parent
            break
    return tuple(out)


def format_validation_error(
    exc: ValidationError, data: Any = None, *, model: type[BaseModel] | None = None
) -> list[str]:
    """One ``path: message`` line per problem, in document order, without duplicates.

    ``model`` is the model that was validated: its fields name the keys a mapping may
    have and the numbers a field expects (without it, messages say less).
    """
    root = model
    found: list[tuple[tuple[int, ...], int, str]] = []
    seen: set[tuple[Any, ...]] = set()
    for index, err in enumerate(exc.errors(include_url=False)):
        loc = _clean(tuple(err["loc"]))
        # A union produces one error per member; keep the first per location.
        if loc in seen:
            continue
        seen.add(loc)
        line = f"{_path(loc)}: {_message(err, root, loc)}"
        found.append((_document_order(data, loc), index, line))
    return [line for _, _, line in sorted(found)]
