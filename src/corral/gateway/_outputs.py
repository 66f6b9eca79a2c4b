"""Tool outputs of any shape: made plain before they are judged, and a problem (never an
escaping exception) when judging or cleaning one fails.

A tool may return anything: a list nested a million deep, a container holding itself,
an int too long to print, an object whose ``__eq__`` or ``__str__`` raises, a ``str``
subclass with methods of its own. The gateway validates and cleans every output inside
one ``try``; whatever that raises becomes an :class:`~corral.gateway.hygiene.OutputProblem`, so
the call ends ``invalid_tool_output`` (enforced) or shows a bounded text form (observed).
"""

from __future__ import annotations

import json
from typing import Any

from corral._safe import error_text, text
from corral.gateway._jsonable import MAX_DEPTH, OutputProblem, jsonable

__all__ = ["MAX_DEPTH", "as_json", "json_depth", "jsonable", "plain", "problem"]

_PLAIN = (str, bool, float, type(None))
#: The longest problem message kept (a schema error quotes the whole output).
MAX_MESSAGE = 500
#: What a NUL character in an output becomes.
NUL, REPLACEMENT = "\0", "\ufffd"


def plain(value: Any) -> Any:
    """A ``str`` subclass as a plain ``str`` (its own methods are never called again);
    anything else unchanged."""
    if isinstance(value, str) and type(value) is not str:
        return str.__str__(value)
    return value


def as_json(observation: Any) -> Any:
    """A cleaned observation as plain JSON data: string keys, lists, no subclasses, the
    same value a stored outcome replays, and no NUL character (neither models nor
    PostgreSQL take one: each becomes U+FFFD). Raises for what JSON cannot hold (an int
    past Python's 4,300-digit conversion limit, a key JSON cannot write)."""
    if type(observation) is str:
        return observation.replace(NUL, REPLACEMENT) if NUL in observation else observation
    if type(observation) in _PLAIN:
        return observation
    text = json.dumps(observation, ensure_ascii=False, allow_nan=False)
    if text.count("[") + text.count("{") > MAX_DEPTH:  # cheap: only then can it be too deep
        depth = json_depth(observation)
        if depth > MAX_DEPTH:
            raise OutputProblem(
                "too_deep", f"output is nested {depth} levels deep, the limit is {MAX_DEPTH}"
            )
    plain = json.loads(text)
    return _without_nul(plain) if "\\u0000" in text else plain


def _without_nul(value: Any) -> Any:
    """``value`` (plain JSON data, at most MAX_DEPTH deep) with NUL replaced in every string
    and key."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT)
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {k.replace(NUL, REPLACEMENT): _without_nul(v) for k, v in value.items()}
    return value


def json_depth(value: Any) -> int:
    """How deep lists and dicts nest in ``value`` (0 for a scalar); iterative, so any depth
    is measured without recursion."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        todo.extend((child, depth) for child in children)
    return deepest


def problem(exc: Exception) -> OutputProblem:
    """``exc``, raised while validating or cleaning an output, as the output's problem."""
    if isinstance(exc, OutputProblem):
        message = str(exc)
        if len(message) <= MAX_MESSAGE:
            return exc
        return OutputProblem(exc.detail, message[: MAX_MESSAGE - 3] + "...")
    if isinstance(exc, RecursionError):
        return OutputProblem("too_deep", "output is nested too deeply to validate or clean")
    if isinstance(exc, ValueError) and "integer string conversion" in text(exc):
        return OutputProblem("not_json", f"output holds a number too long to write: {text(exc)}")
    return OutputProblem("unreadable", f"output cannot be validated or cleaned: {error_text(exc)}")
