"""Turn pydantic validation errors into one plain line per problem."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


def _path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _got(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _known_keys(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    model: Any = root
    for item in loc[:-1]:
        if model is None:
            return []
        field = model.model_fields.get(item) if isinstance(item, str) else None
        if field is None:
            # A dict of models (tools.specs.<name>): step into the value type.
            return []
        annotation = field.annotation
        model = _model_in(annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(err: Any, root: type[BaseModel] | None) -> str:
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        known = _known_keys(root, loc)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known: {', '.join(known)})" if known else "")
        return f"unknown key{hint}"
    if kind == "missing":
        return "is required"
    if kind in ("greater_than", "greater_than_equal"):
        bound = ctx.get("gt", ctx.get("ge"))
        number = "integer" if isinstance(value, int) and not isinstance(value, bool) else "number"
        if kind == "greater_than" and bound == 0:
            return f"must be a positive {number}, got {_got(value)}"
        if kind == "greater_than_equal" and bound == 0:
            return f"must be zero or more, got {_got(value)}"
        op = ">" if kind == "greater_than" else ">="
        return f"must be {op} {bound}, got {_got(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {_got(value)}"
    if kind in ("float_type", "float_parsing", "decimal_type", "decimal_parsing", "finite_number"):
        return f"must be a number, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {_got(value)}"
    if kind in ("string_type",):
        return f"must be a string, got {_got(value)}"
    if kind in ("list_type",):
        return f"must be a list, got {_got(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping, got {_got(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, got {_got(value)}"
    if kind == "value_error":
        msg = str(ctx.get("error", err["msg"]))
        return msg
    return f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_got(value)}"


def format_validation_error(exc: ValidationError, data: Any = None) -> list[str]:
    """One ``path: message`` line per problem, in document order, without duplicates."""
    root: type[BaseModel] | None = None
    title = exc.title
    from . import policy as _policy  # local import: policy imports this module

    candidate = getattr(_policy, title, None)
    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
        root = candidate
    lines: list[str] = []
    seen_union: set[tuple[Any, ...]] = set()
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        # Optional fields produce one error per union member; keep the first per location.
        clean = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("function-before",))))
        if clean in seen_union:
            continue
        seen_union.add(clean)
        lines.append(f"{_path(clean)}: {_message(err, root)}")
    return lines
