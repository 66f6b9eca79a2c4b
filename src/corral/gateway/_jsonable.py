"""Tool outputs as JSON: what pydantic can serialise made plain, and the bounded JSON text
of any output.

A tool may return a pydantic model, a dataclass, an enum, a date, a UUID, a Decimal, a
set or a named tuple: :func:`jsonable` replaces each by its JSON form as pydantic writes
it (``pydantic_core.to_jsonable_python``: a model or dataclass becomes a dict, a date its
ISO text, a Decimal its text, a set a list, UTF-8 bytes their text). What stays
unserialisable is an :class:`OutputProblem`: an object pydantic does not know, bytes
that are not UTF-8, and on purpose iterators and generators, which pydantic would read
to the end (reading one consumes it, and it may never end). Both functions are bounded
by the output cap, never by the size of the output: past the cap nothing is converted
(what is never shown is never read), though one object pydantic converts (a model holding
a million rows) is converted whole, in pydantic's compiled code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic_core import to_jsonable_python

#: The deepest an output may be nested: far below Python's recursion limit, so that
#: copying, scrubbing and rendering it (recursive code) can never hit that limit.
MAX_DEPTH = 64

_LEAVES = (str, int, float, type(None))  # bool is an int
_KEYS = (str, int, float, type(None))
_encode_str = json.encoder.encode_basestring  # as json.dumps(..., ensure_ascii=False)


class OutputProblem(Exception):
    """The output cannot be handed to the model; ``detail`` is a short code."""

    def __init__(self, detail: str, message: str) -> None:
        self.detail = detail
        super().__init__(message)


def jsonable(value: Any, limit: int) -> Any:
    """``value`` with what JSON cannot hold replaced by its JSON form, as pydantic gives it.

    Plain JSON data (also with ``str``, ``int``, ``list``, ``tuple`` or ``dict``
    subclasses, which JSON writes as their base types) is returned as is, the same
    object. Only about the first ``limit`` characters' worth of ``value`` (as JSON) is
    read; the rest is left as it is (an output that long is cut or refused anyway).
    Raises :class:`OutputProblem` (``not_json``) for what cannot be converted.
    """
    if isinstance(value, _LEAVES) or not _has_foreign(value, limit):
        return value
    return _convert(value, 0, [limit])


def _has_foreign(value: Any, limit: int) -> bool:
    """Whether a value JSON cannot write occurs in the first ``limit`` characters' worth
    of ``value`` (iterative, bounded: a cycle or a huge value stops at ``limit``)."""
    size = 0
    todo = [value]
    while todo and size <= limit:
        item = todo.pop()
        if isinstance(item, str):
            size += str.__len__(item) + 2
        elif isinstance(item, _LEAVES):
            size += 1
        elif isinstance(item, dict):
            size += 2 + 4 * dict.__len__(item)
            for key, child in dict.items(item):
                if not isinstance(key, _KEYS):
                    return True
                todo.append(child)
        elif isinstance(item, list):  # the base type's methods, as json.dumps reads it
            size += 2 + 2 * list.__len__(item)
            todo.extend(list.__iter__(item))
        elif isinstance(item, tuple):
            size += 2 + 2 * tuple.__len__(item)
            todo.extend(tuple.__iter__(item))
        else:
            return True
    return False


def _convert(value: Any, depth: int, left: list[int]) -> Any:
    """A copy of ``value`` with foreign values converted, within the budget ``left[0]``
    (characters of JSON) and MAX_DEPTH; beyond either, the rest is kept as it is."""
    if isinstance(value, str):
        left[0] -= str.__len__(value) + 2
        return value
    if isinstance(value, _LEAVES):
        left[0] -= 1
        return value
    if left[0] < 0 or depth > MAX_DEPTH:
        return value  # never shown, or refused as too deep later: not read here
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, child in dict.items(value) if isinstance(value, dict) else value.items():
            left[0] -= 4
            out[json_key(key)] = _convert(child, depth + 1, left) if left[0] >= 0 else child
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = []
        for child in _items(value) if isinstance(value, list | tuple) else value:
            left[0] -= 2
            items.append(_convert(child, depth + 1, left) if left[0] >= 0 else child)
        return items
    return _convert(leaf(value), depth, left)


def leaf(value: Any) -> Any:
    """One value JSON cannot write (a model, a dataclass, a date, ...), as pydantic writes
    it (whole: one model is converted in one call, in pydantic's compiled code);
    :class:`OutputProblem` for iterators, bytes that are not UTF-8 and what pydantic
    cannot serialise."""
    kind = type(value).__name__
    if isinstance(value, Iterator):
        raise OutputProblem("not_json", f"output holds an iterator ({kind}): return a list instead")
    try:
        return to_jsonable_python(value)
    except Exception:  # pydantic's message may quote the value: the type says enough
        if isinstance(value, bytes | bytearray):
            why = f"it holds {kind} that are not UTF-8 text (decode or base64-encode them)"
        else:
            why = f"it holds a {kind}"
        raise OutputProblem("not_json", f"output is not JSON-serialisable: {why}") from None


def json_key(key: Any) -> Any:
    """A dict key as JSON can write it: text, a number, a boolean or null as they are;
    anything else as pydantic writes a key (a UUID or a date its text, an enum its value)."""
    if isinstance(key, _KEYS):
        return key
    try:
        (written,) = to_jsonable_python({key: None})
    except Exception:
        raise OutputProblem(
            "not_json", f"output has a key JSON cannot write: a {type(key).__name__}"
        ) from None
    return written


def json_prefix(value: Any, limit: int) -> tuple[str, bool]:
    """The JSON text of ``value`` as ``json.dumps(value, ensure_ascii=False)`` writes it,
    at least its first ``limit`` characters: ``(text, complete)``.

    Iterative and bounded by ``limit``, whatever the size of ``value`` (a long string is
    encoded only as far as the limit). Foreign values met on the way are converted
    (:func:`leaf`); NaN, a container holding itself, nesting past MAX_DEPTH and what
    cannot be converted raise :class:`OutputProblem` when met before the limit.
    """
    out: list[str] = []
    size = 0
    # One frame per open container: its items, whether it is a dict, its id, and whether
    # an item was written yet.
    frames: list[tuple[Iterator[Any], bool, int, list[bool]]] = []
    open_ids: set[int] = set()
    pending: list[Any] = [value]  # the value to write next, if any
    while size <= limit:
        if pending:
            item = pending.pop()
            if isinstance(item, str):
                room = limit - size + 1
                if str.__len__(item) > room:  # written only as far as it can be shown
                    out.append(_encode_str(str.__getitem__(item, slice(room)))[:-1])
                    return "".join(out), False
            text = _scalar(item)
            if text is None:
                if not isinstance(item, dict | list | tuple):
                    pending.append(leaf(item))
                    continue
                if id(item) in open_ids:
                    raise OutputProblem(
                        "not_json", "output is not JSON-serialisable: it contains itself"
                    )
                if len(frames) >= MAX_DEPTH:
                    raise OutputProblem(
                        "too_deep", f"output is nested more than {MAX_DEPTH} levels deep"
                    )
                is_dict = isinstance(item, dict)
                open_ids.add(id(item))
                frames.append((_items(item), is_dict, id(item), [False]))
                text = "{" if is_dict else "["
            out.append(text)
            size += len(text)
            continue
        if not frames:
            return "".join(out), True
        items, is_dict, ident, started = frames[-1]
        nxt: Any = next(items, _END)
        if nxt is _END:
            frames.pop()
            open_ids.discard(ident)
            out.append("}" if is_dict else "]")
            size += 1
            continue
        sep = ", " if started[0] else ""
        started[0] = True
        if is_dict:
            key, child = nxt
            sep += _key_text(key) + ": "
        else:
            child = nxt
        out.append(sep)
        size += len(sep)
        pending.append(child)
    return "".join(out), not frames and not pending


_END = object()


def _items(container: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    # The base types' own iterators: a subclass's may lie or raise (json.dumps reads the
    # values as the base type holds them).
    if isinstance(container, dict):
        return iter(dict.items(container))
    if isinstance(container, list):
        return list.__iter__(container)
    return tuple.__iter__(container)


def _scalar(item: Any) -> str | None:
    """The JSON text of a scalar, or ``None`` for a container or a foreign value."""
    if isinstance(item, str):
        return str(_encode_str(str.__str__(item)))
    if item is None:
        return "null"
    if item is True or item is False:
        return "true" if item else "false"
    if isinstance(item, int):
        return int.__repr__(item)  # ValueError past 4,300 digits: a problem, like json.dumps
    if isinstance(item, float):
        if not math.isfinite(item):
            raise OutputProblem("not_json", f"output {item!r} is not a JSON number")
        return float.__repr__(item)
    return None


def _key_text(key: Any) -> str:
    key = json_key(key)
    if isinstance(key, str):
        return str(_encode_str(str.__str__(key)))
    if key is True or key is False or key is None:
        return '"' + ("true" if key is True else "false" if key is False else "null") + '"'
    if isinstance(key, float) and not math.isfinite(key):
        raise OutputProblem("not_json", f"output has the key {key!r}, not a JSON number")
    if isinstance(key, int | float):
        text = int.__repr__(key) if isinstance(key, int) else float.__repr__(key)
        return f'"{text}"'
    return str(_encode_str(str(key)))
