"""A policy's raw input, bounded before it is validated: text, JSON parsing and the tree of
values (YAML is parsed by :mod:`corral.policy._yaml`, under the same bounds).

A policy may come from anyone who can write a file or a dict: every size is capped so
that loading one takes bounded time and memory and ends in a Policy or one
``path: message`` line per problem, never a traceback.

- a file or text of at most :data:`MAX_POLICY_CHARS` characters; only regular files
  are read (a FIFO or a device would block or never end);
- nesting of at most :data:`MAX_DEPTH` levels; at most :data:`MAX_VALUES` values in
  all, counting a YAML alias each time it is used (an alias bomb expands to billions);
  no value that contains itself;
- strings of at most :data:`MAX_STRING_CHARS` characters, without NUL; integers of at
  most :data:`MAX_INT_DIGITS` digits; decimals within ``1e-30`` .. ``1e30``;
- keys are strings; values are text, numbers, true/false, null, dates, lists and
  mappings (``str``/``int``/``float`` subclasses are read as the plain type).
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from corral._safe import type_name
from corral.exceptions import PolicyError
from corral.policy.messages import render_value

MAX_POLICY_CHARS = 1_000_000
MAX_DEPTH = 64
MAX_VALUES = 100_000
MAX_STRING_CHARS = 10_000
MAX_INT_DIGITS = 30
#: At most this many problem lines are listed (then a line saying how many more).
MAX_PROBLEMS = 100

_MAX_INT_BITS = 100  # 2**100 has 31 digits: the cheap test before counting digits
_LEAVES = (bool, type(None), Decimal, datetime.date, datetime.time, bytes, BaseModel)


# -- files and text -------------------------------------------------------------------------
def read_text(path: Path) -> str:
    """The text of a policy file: a regular file of at most :data:`MAX_POLICY_CHARS`
    bytes, UTF-8 (a byte-order mark is dropped). Raises :class:`PolicyError`."""
    where = str(path)

    def fail(message: str) -> PolicyError:
        return PolicyError([f"(file): {message}"], source=where)

    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise fail(f"no such file: {path}") from None
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail(f"cannot read {path}: Is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise fail(f"{path} is not a regular file (a pipe, socket or device is never read)")
    if info.st_size > MAX_POLICY_CHARS:
        raise fail(f"{path} is {info.st_size} bytes, the limit is {MAX_POLICY_CHARS}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_POLICY_CHARS + 1)  # it may have grown since stat
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_POLICY_CHARS:
        raise fail(f"{path} is more than {MAX_POLICY_CHARS} bytes, the limit")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def check_size(text: str, source: str | None) -> None:
    if len(text) > MAX_POLICY_CHARS:
        raise PolicyError(
            [f"(file): is {len(text)} characters, the limit is {MAX_POLICY_CHARS}"],
            source=source,
        )


# -- JSON -----------------------------------------------------------------------------------
class _DuplicateKey(ValueError):
    """A mapping names the same key twice (YAML and JSON both allow it; corral does not)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


class _LongNumber(ValueError):
    """A number with more digits than a policy may hold (``MAX_INT_DIGITS``)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongNumber(
            f"a number of {len(text.lstrip('-'))} digits (the limit is {MAX_INT_DIGITS})"
        )
    return int(text)


def parse_json(text: str, source: str | None) -> Any:
    """The value in ``text``: strict JSON (no trailing comma, no comment, no key twice),
    bounded as above."""
    check_size(text, source)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}: "
        raise PolicyError([f"(file): {where}not valid JSON ({exc.msg})"], source=source) from None
    except (_DuplicateKey, _LongNumber) as exc:
        raise PolicyError([f"(file): not valid JSON ({exc})"], source=source) from None
    except RecursionError:
        raise PolicyError(
            [f"(file): nested more than {MAX_DEPTH} levels deep"], source=source
        ) from None


# -- the tree of values ---------------------------------------------------------------------
def decimal_problem(value: Decimal) -> str | None:
    """Why a decimal is no number a policy means (too many digits, too large or too
    small an exponent: its plain form would be millions of characters), or ``None``."""
    if not value.is_finite():
        return None  # judged by the field
    _, digits, exponent = value.as_tuple()
    if len(digits) > 40 or not -30 <= int(exponent) <= 30 or abs(value.adjusted()) > 30:
        return f"must be a number between 1e-30 and 1e30 of at most 40 digits, got {value:.6g}"
    return None


def plain_tree(data: Any, source: str | None = None) -> Any:
    """``data`` with every container rebuilt of plain types, or raise :class:`PolicyError`
    listing what breaks the bounds in the module docstring (in document order)."""
    problems: list[str] = []
    holder: list[Any] = [None]
    # (value, path, depth, parent container, key in it, ids of the containers above)
    todo: list[tuple[Any, tuple[Any, ...], int, Any, Any, tuple[int, ...]]] = [
        (data, (), 0, holder, 0, ())
    ]
    count = 0
    while todo:
        value, path, depth, parent, key, above = todo.pop()
        count += 1
        if count > MAX_VALUES:
            problems.append(f"(top level): holds more than {MAX_VALUES} values, the limit")
            break
        fixed, why = _leaf(value)
        if why is not None:
            problems.append(f"{_path(path)}: {why}")
        elif fixed is not _CONTAINER:
            parent[key] = fixed
            continue
        else:
            if id(value) in above:
                problems.append(f"{_path(path)}: contains itself")
                continue
            if depth >= MAX_DEPTH:
                problems.append(f"{_path(path)}: nested more than {MAX_DEPTH} levels deep")
                continue
            inner = (*above, id(value))
            if isinstance(value, dict):
                out: dict[Any, Any] = {}
                parent[key] = out
                items = list(dict.items(value))
                for k, v in reversed(items):
                    name, why = _key(k)
                    if why is not None:
                        problems.append(f"{_path(path)}: {why}")
                        continue
                    todo.append((v, (*path, name), depth + 1, out, name, inner))
            else:
                seq = list(
                    list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value)
                )
                out_list: list[Any] = [None] * len(seq)
                parent[key] = out_list
                for i in range(len(seq) - 1, -1, -1):
                    todo.append((seq[i], (*path, i), depth + 1, out_list, i, inner))
        if len(problems) > MAX_PROBLEMS:
            break
    if problems:
        problems = sorted(set(problems), key=problems.index)
        if len(problems) > MAX_PROBLEMS:
            problems = [
                *problems[:MAX_PROBLEMS],
                f"(and more problems past the first {MAX_PROBLEMS})",
            ]
        raise PolicyError(problems, source=source)
    return holder[0]


_CONTAINER = object()


def _leaf(value: Any) -> tuple[Any, str | None]:
    """(the plain form of a leaf, or _CONTAINER for a dict/list/tuple; why it is refused)."""
    if isinstance(value, str):
        text = value if type(value) is str else str.__str__(value)
        if len(text) > MAX_STRING_CHARS:
            return None, f"is {len(text)} characters long, the limit is {MAX_STRING_CHARS}"
        if "\0" in text:
            return None, "contains a NUL character"
        return text, None
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int):
        number = value if type(value) is int else int.__int__(value)
        if number.bit_length() > _MAX_INT_BITS:
            digits = int(number.bit_length() * 0.30103) + 1
            return None, f"is a number of about {digits} digits, the limit is {MAX_INT_DIGITS}"
        return number, None
    if isinstance(value, float):
        return (value if type(value) is float else float.__float__(value)), None
    if isinstance(value, Decimal):
        return value, decimal_problem(value)
    if isinstance(value, bytes):
        if len(value) > MAX_STRING_CHARS:
            return None, f"is {len(value)} bytes long, the limit is {MAX_STRING_CHARS}"
        return value, None
    if isinstance(value, _LEAVES):
        return value, None
    if isinstance(value, dict | list | tuple):
        return _CONTAINER, None
    return None, (
        f"must be text, a number, true/false, null, a list or a mapping, got {type_name(value)}"
    )


def _key(key: Any) -> tuple[str, str | None]:
    if isinstance(key, str):
        name = key if type(key) is str else str.__str__(key)
        if len(name) > MAX_STRING_CHARS or "\0" in name:
            return name, f"a key is longer than {MAX_STRING_CHARS} characters or holds a NUL"
        return name, None
    return "", f"keys must be strings, got {render_value(key)}"


def _path(path: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in path:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + (item if item.isprintable() else repr(item)))
    text = "".join(parts) or "(top level)"
    return text if len(text) <= 200 else text[:197] + "..."
