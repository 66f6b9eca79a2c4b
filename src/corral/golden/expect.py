"""A task's expectations checked against one run's figures: each failed check one
:class:`Failure` naming the check, what was expected and what the run did.

>>> from corral.golden.suite import Expect
>>> expect = Expect.model_validate({"stop_reason": "ok", "tool_calls": {"max": 1},
...                                  "answer": {"contains": ["refund"]}})
>>> run = Figures(stop_reason="ok", answer="No.", tool_calls=3)
>>> [(f.check, f.expected, f.got) for f in check(expect, run)]
[('tool_calls', '<= 1', '3'), ('answer contains', "'refund'", "'No.'")]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from corral._safe import shown
from corral.golden import jsonpath
from corral.golden.figures import Figures
from corral.golden.suite import AnswerChecks, Bounds, Expect, JsonCheck


@dataclass(frozen=True, kw_only=True)
class Failure:
    """One expectation a run did not meet (``run``: its number, from 1)."""

    task: str = ""
    run: int = 1
    check: str
    expected: str
    got: str

    def to_dict(self) -> dict[str, object]:
        return {
            "task": self.task,
            "run": self.run,
            "check": self.check,
            "expected": self.expected,
            "got": self.got,
        }


def _number(value: float | Decimal) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(name: str, bounds: Bounds | None, value: float | Decimal) -> Iterator[Failure]:
    if bounds is None:
        return
    if bounds.min is not None and value < bounds.min:
        yield Failure(check=name, expected=f">= {bounds.min:g}", got=_number(value))
    if bounds.max is not None and value > bounds.max:
        yield Failure(check=name, expected=f"<= {bounds.max:g}", got=_number(value))


def check(expect: Expect, run: Figures) -> list[Failure]:
    """Every check of ``expect`` that ``run`` fails, in the order the schema lists them."""
    return list(_checks(expect, run))


def _checks(expect: Expect, run: Figures) -> Iterator[Failure]:
    allowed = expect.stop_reason
    if allowed is not None and run.stop_reason not in allowed:
        yield Failure(check="stop_reason", expected=" or ".join(allowed), got=run.stop_reason)
    yield from _bounds("tool_calls", expect.tool_calls, float(run.tool_calls))
    yield from _bounds("tokens", expect.tokens, float(run.tokens))
    yield from _bounds("usd", expect.usd, float(run.usd))
    for name in expect.called:
        if not run.by_tool.get(name):
            yield Failure(check="called", expected=f"{name} called", got="never called")
    for name in expect.not_called:
        count = run.by_tool.get(name, 0)
        if count:
            yield Failure(check="not_called", expected=f"{name} never called", got=f"{count}x")
    if expect.answer is not None:
        yield from _answer(expect.answer, run.answer)


def _answer(checks: AnswerChecks, answer: str | None) -> Iterator[Failure]:
    text = answer or ""
    got = shown(answer, 40)
    if checks.equals is not None and text != checks.equals:
        yield Failure(check="answer equals", expected=shown(checks.equals, 60), got=got)
    for part in checks.contains:
        if part not in text:
            yield Failure(check="answer contains", expected=shown(part, 60), got=got)
    for part in checks.not_contains:
        if part in text:
            yield Failure(check="answer not_contains", expected=shown(part, 60), got=got)
    if checks.regex is not None and re.search(checks.regex, text) is None:
        yield Failure(check="answer regex", expected=shown(checks.regex, 60), got=got)
    if checks.json_:
        parsed, value = jsonpath.answer_json(text)
        for item in checks.json_:
            yield from _json(item, parsed, value, got)


def _json(item: JsonCheck, parsed: bool, value: object, got: str) -> Iterator[Failure]:
    name = f"answer json {item.path}"
    if not parsed:
        yield Failure(check=name, expected="the answer is JSON", got=f"not JSON: {got}")
        return
    found, at = jsonpath.read(value, item.path)
    if not found:
        if item.exists:
            yield Failure(check=name, expected="exists", got="missing")
        return
    if not item.exists:
        yield Failure(check=name, expected="missing", got=shown(at, 60))
    elif "equals" in item.model_fields_set and at != item.equals:
        yield Failure(check=name, expected=shown(item.equals, 60), got=shown(at, 60))
    elif item.contains is not None and (not isinstance(at, str) or item.contains not in at):
        yield Failure(check=name, expected=f"contains {item.contains!r}", got=shown(at, 60))
