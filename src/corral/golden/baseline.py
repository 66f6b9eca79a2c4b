"""A suite's baseline (the figures of every run, saved as JSON) and the drift rule that
compares a new result with it.

The rule, figure by figure and task by task (docs/golden.md says it with examples):

- numbers (``tool_calls``, the calls of each tool, ``tokens_per_request``, ``usd``): the
  baseline's runs give a range ``[lo, hi]`` (one value when it was saved with one run); it
  widens by the figure's tolerance, ``max(abs, rel * hi)``; the figure drifted when any new
  run falls outside. With ``--repeat`` > 1 both sides are ranges, so nondeterminism the
  baseline saw is allowed and only what goes past it is drift;
- ``stop_reason``: drifted when a new run stops for a reason no baseline run stopped for
  (``stop_reason: ignore`` in the thresholds turns it off);
- ``answer``: each new answer's similarity (``difflib`` ratio, 0 to 1) to the closest
  baseline answer; drifted below ``answer_similarity`` (1.0, the default, means the same
  text; 0 turns it off).

A task the baseline lacks is ``new``; one the suite no longer has is ``gone``: neither is
drift.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from corral.golden.figures import Figures
from corral.golden.load import read_document, validate
from corral.golden.runner import SuiteResult
from corral.golden.suite import Thresholds, Tolerance

FORMAT = "corral-golden-baseline/1"
Verdict = Literal["ok", "drift", "new", "gone"]


@dataclass(frozen=True, kw_only=True)
class Drift:
    """One compared figure: a row of the drift report."""

    task: str
    figure: str
    baseline: str
    now: str
    allowed: str
    verdict: Verdict

    def to_dict(self) -> dict[str, str]:
        return {
            "task": self.task,
            "figure": self.figure,
            "baseline": self.baseline,
            "now": self.now,
            "allowed": self.allowed,
            "verdict": self.verdict,
        }


# -- the file ------------------------------------------------------------------------------
class _Run(BaseModel):
    model_config = ConfigDict(extra="ignore")
    stop_reason: str
    answer: str | None = None
    tool_calls: int = Field(ge=0)
    by_tool: dict[str, int] = Field(default_factory=dict)
    requests: int = Field(ge=0)
    tokens: int = Field(ge=0)
    usd: Decimal = Field(ge=0)
    error: str | None = None


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["corral-golden-baseline/1"]
    suite: str
    model: str
    repeat: int = Field(ge=1)
    tasks: dict[str, list[_Run]]


@dataclass(frozen=True, kw_only=True)
class Baseline:
    suite: str
    model: str
    repeat: int
    tasks: dict[str, list[Figures]]


def baseline_of(result: SuiteResult) -> dict[str, Any]:
    """The JSON a baseline file holds for ``result``."""
    return {
        "format": FORMAT,
        "suite": result.suite,
        "model": result.model,
        "repeat": result.repeat,
        "tasks": {t.id: [r.to_dict() for r in t.runs] for t in result.tasks},
    }


def save_baseline(result: SuiteResult, path: str | Path) -> None:
    text = json.dumps(baseline_of(result), indent=2, ensure_ascii=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline file; raises :class:`~corral.SuiteError` with a line per problem."""
    data = validate(_File, read_document(path))
    tasks = {
        name: [Figures.from_dict(run.model_dump(mode="python")) for run in runs]
        for name, runs in data.tasks.items()
    }
    return Baseline(suite=data.suite, model=data.model, repeat=data.repeat, tasks=tasks)


# -- the rule ------------------------------------------------------------------------------
def number(value: float) -> str:
    """A figure as the report shows it: three significant digits, whole from 1000."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def span(values: Sequence[float]) -> str:
    """``lo–hi`` of ``values`` (one number when they are all the same)."""
    lo, hi = min(values), max(values)
    return number(lo) if lo == hi else f"{number(lo)}–{number(hi)}"


def _numbers(task: str, figure: str, was: list[float], now: list[float], tol: Tolerance) -> Drift:
    lo, hi = min(was), max(was)
    slack = max(tol.abs, tol.rel * abs(hi))
    low, high = max(0.0, lo - slack), hi + slack
    ok = all(low - 1e-9 <= v <= high + 1e-9 for v in now)
    allowed = span([low, high])
    return Drift(
        task=task,
        figure=figure,
        baseline=span(was),
        now=span(now),
        allowed=allowed,
        verdict="ok" if ok else "drift",
    )


def _cut(text: str | None, limit: int = 40) -> str:
    shown = "(none)" if text is None else " ".join(text.split())
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _answers(task: str, was: list[Figures], now: list[Figures], wanted: float) -> Drift:
    def best(answer: str | None) -> float:
        return max(difflib.SequenceMatcher(None, answer or "", b.answer or "").ratio() for b in was)

    worst = min(best(r.answer) for r in now)
    allowed = "same text" if wanted >= 1 else f"similarity >= {wanted:.2f}"
    drifted = worst < wanted
    return Drift(
        task=task,
        figure="answer",
        baseline=_cut(was[0].answer),
        now=_cut(next((r.answer for r in now if best(r.answer) == worst), now[0].answer)),
        allowed=allowed + (f" (got {worst:.2f})" if drifted and wanted < 1 else ""),
        verdict="drift" if drifted else "ok",
    )


def _stops(task: str, was: list[Figures], now: list[Figures]) -> Drift:
    before = sorted({r.stop_reason for r in was})
    after = sorted({r.stop_reason for r in now})
    return Drift(
        task=task,
        figure="stop_reason",
        baseline=", ".join(before),
        now=", ".join(after),
        allowed=", ".join(before),
        verdict="ok" if set(after) <= set(before) else "drift",
    )


def _calls_of(tool: str) -> Callable[[Figures], float]:
    return lambda r: float(r.by_tool.get(tool, 0))


def compare_task(
    task: str, was: list[Figures], now: list[Figures], thresholds: Thresholds
) -> list[Drift]:
    """Every figure of one task compared (see the module docstring)."""
    rows: list[Drift] = []
    if thresholds.stop_reason == "same":
        rows.append(_stops(task, was, now))
    figures: list[tuple[str, Callable[[Figures], float], Tolerance]] = [
        ("tool_calls", lambda r: float(r.tool_calls), thresholds.tool_calls),
        ("tokens_per_request", lambda r: r.tokens_per_request, thresholds.tokens_per_request),
        ("usd", lambda r: float(r.usd), thresholds.usd),
    ]
    tools = sorted({name for r in (*was, *now) for name in r.by_tool})
    for name in tools:
        figures.insert(len(figures) - 2, (f"calls {name}", _calls_of(name), thresholds.tool_calls))
    for figure, read, tol in figures:
        rows.append(_numbers(task, figure, [read(r) for r in was], [read(r) for r in now], tol))
    if thresholds.answer_similarity > 0:
        rows.append(_answers(task, was, now, thresholds.answer_similarity))
    return rows


def compare(result: SuiteResult, baseline: Baseline, thresholds: Thresholds) -> list[Drift]:
    """Every figure of every task compared with ``baseline``, in the suite's order, then
    the tasks only the baseline has."""
    rows: list[Drift] = []
    for task in result.tasks:
        was = baseline.tasks.get(task.id)
        if not was:
            rows.append(_whole(task.id, "new", "(none)", f"{len(task.runs)} run(s)"))
            continue
        rows.extend(compare_task(task.id, was, task.runs, thresholds))
    ours = {t.id for t in result.tasks}
    rows.extend(
        _whole(name, "gone", f"{len(runs)} run(s)", "(not in the suite)")
        for name, runs in baseline.tasks.items()
        if name not in ours
    )
    return rows


def _whole(task: str, verdict: Verdict, was: str, now: str) -> Drift:
    return Drift(task=task, figure="task", baseline=was, now=now, allowed="-", verdict=verdict)


def drifted(rows: Iterable[Drift]) -> list[Drift]:
    return [r for r in rows if r.verdict == "drift"]
