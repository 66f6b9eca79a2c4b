"""A minimal JSON path for answer checks: dotted keys and bracketed indices.

``order.items[0].sku`` reads key ``order``, key ``items``, its first element, key ``sku``;
``[-1]`` is the last element; ``["a.b"]`` (or ``['a.b']``) is a key holding a dot or other
punctuation; a path may start with ``$`` (``$.order``). Nothing else (no wildcards,
filters or slices): a check names one value.

>>> read({"order": {"items": [{"sku": "A1"}, {"sku": "B2"}]}}, "order.items[-1].sku")
(True, 'B2')
>>> read({"a.b": 1}, '["a.b"]')
(True, 1)
>>> read({"a": []}, "a[0]")
(False, None)
"""

from __future__ import annotations

import json
import re
from typing import Any

_STEP = re.compile(
    r"""\.?(?P<key>[A-Za-z0-9_-]+)|\[(?P<index>-?\d+)\]|\[(?P<q>["'])(?P<quoted>.*?)(?P=q)\]"""
)
_FENCED = re.compile(r"```(?:json)?\s*\n(?P<body>.*?)\n\s*```", re.S)


def parse(path: str) -> list[str | int]:
    """The steps of ``path``; raises :class:`ValueError` naming where it stops making sense."""
    text = path[1:] if path.startswith("$") else path
    steps: list[str | int] = []
    at = 0
    while at < len(text):
        m = _STEP.match(text, at)
        if m is None or (at == 0 and text.startswith(".") and not path.startswith("$")):
            raise ValueError(f"JSON path {path!r}: cannot read it at character {at + 1}")
        if m.group("key") is not None:
            steps.append(m.group("key"))
        elif m.group("index") is not None:
            steps.append(int(m.group("index")))
        else:
            steps.append(m.group("quoted"))
        at = m.end()
    if not steps:
        raise ValueError(f"JSON path {path!r}: names no value")
    return steps


def read(value: Any, path: str) -> tuple[bool, Any]:
    """``(True, the value at path)``, or ``(False, None)`` when the value has no such key or
    element."""
    node = value
    for step in parse(path):
        if isinstance(step, int):
            found = isinstance(node, list) and -len(node) <= step < len(node)
        else:
            found = isinstance(node, dict) and step in node
        if not found:
            return False, None
        node = node[step]
    return True, node


def answer_json(answer: str) -> tuple[bool, Any]:
    """The answer as JSON: the whole text, else the first fenced block (```json ...```)."""
    for candidate in (answer, *(m.group("body") for m in _FENCED.finditer(answer))):
        try:
            return True, json.loads(candidate)
        except ValueError:
            continue
    return False, None
