"""Regular expressions from a policy (``constraints.*.pattern``, ``redact.patterns``):
bounded so that no pattern can stall a run.

Python's ``re`` backtracks, and cannot be interrupted: a pattern such as ``(a+)+$``
takes exponential time on a text of a few dozen characters. A policy's patterns are
therefore checked when the policy is loaded (:func:`problem`):

- at most :data:`MAX_PATTERN_CHARS` characters, and it must compile;
- no repeat inside a repeat where either may repeat more than
  :data:`SMALL_REPEAT` times (``(a+)+``, ``(\\w+\\s?)*``, ``(a{1,3})+``): the shape behind
  catastrophic backtracking; ``(\\d{1,3}\\.){3}`` is fine;
- no alternatives that can start with the same character under such a repeat
  (``(a|ab)+``, ``(\\w|\\d)*``); ``(foo|bar)+`` is fine.

They also run on bounded input: an argument constraint's pattern is matched only on
values of at most :data:`MAX_MATCH_CHARS` characters (a longer value is refused).
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

#: The longest pattern a policy may hold.
MAX_PATTERN_CHARS = 1000
#: The longest text an argument constraint's pattern is matched on.
MAX_MATCH_CHARS = 10_000
#: A repeat of at most this many times may hold another (``(\d{1,3}\.){3}``).
SMALL_REPEAT = 10

_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
_WIDE = None  # a first-character set that may hold anything


def problem(pattern: str) -> str | None:
    """Why ``pattern`` may not be used (see the module docstring), or ``None``."""
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is {len(pattern)} characters, the limit is {MAX_PATTERN_CHARS}"
    try:
        re.compile(pattern)
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    except (RecursionError, OverflowError, ValueError):
        return "is nested too deeply to compile"
    return _nested(list(parsed))


def _nested(items: list[Any]) -> str | None:
    # (items, inside a repeat?, inside a big repeat?) to visit; iterative: nesting is deep.
    todo: list[tuple[list[Any], bool, bool]] = [(items, False, False)]
    while todo:
        seq, inside, big_outer = todo.pop()
        for op, av in seq:
            if op in _REPEATS:
                _, high, sub = av
                if high <= 1:
                    todo.append((list(sub), inside, big_outer))
                    continue
                big = high == sre.MAXREPEAT or high > SMALL_REPEAT
                if inside and (big or big_outer):
                    return (
                        "can take exponential time to match: a repeated group holds another "
                        "repeat (write it without nested quantifiers)"
                    )
                todo.append((list(sub), True, big))
            elif op == sre.BRANCH:
                branches = [list(b) for b in av[1]]
                if big_outer and _overlap(branches):
                    return (
                        "can take exponential time to match: alternatives under a repeat "
                        "can start with the same character"
                    )
                todo.extend((b, inside, big_outer) for b in branches)
            elif op == sre.SUBPATTERN:
                todo.append((list(av[3]), inside, big_outer))
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                todo.append((list(av[1]), inside, big_outer))
            elif op == sre.GROUPREF_EXISTS:
                todo.extend((list(b), inside, big_outer) for b in av[1:] if b is not None)
            # POSSESSIVE_REPEAT and ATOMIC_GROUP never backtrack into: nothing to check.
    return None


def _overlap(branches: list[list[Any]]) -> bool:
    seen: set[int] = set()
    for branch in branches:
        first = _first(branch)
        if first is _WIDE or seen & first:
            return True
        seen |= first
    return False


def _first(seq: list[Any]) -> set[int] | None:
    """The characters ``seq`` can start with (``None``: any, or unknown)."""
    for op, av in seq:
        if op == sre.AT:
            continue  # an anchor matches no character: look at what follows
        if op == sre.LITERAL:
            return {av}
        if op == sre.IN and all(o == sre.LITERAL for o, _ in av):
            return {v for _, v in av}
        if op == sre.SUBPATTERN:
            return _first(list(av[3]))
        if op in _REPEATS and av[0] >= 1:
            return _first(list(av[2]))
        return _WIDE
    return _WIDE  # empty: matches before any character
