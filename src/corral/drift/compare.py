"""Each tracked figure of the recent window judged against the baseline's, with its threshold.

A number figure's change is relative: ``(recent - baseline) / baseline`` (from a baseline
of 0, any rise is an infinite change); it drifted when its size passes the threshold, up
or down. The stop-reason mix is compared by total variation distance: half the sum, over
every reason, of the change in its share of the runs (0: the same mix; 1: no reason in
common); it drifted past its threshold. A window with fewer than ``min_runs`` runs is not
judged at all. For each figure that drifted, the recent runs that moved it most are named;
models, tool definitions and policies seen in the recent window but not in the baseline
(or the reverse) are the likely causes.

>>> change(4.0, 5.0), change(0.0, 0.0), change(0.0, 1.0)
(0.25, 0.0, inf)
>>> total_variation({"ok": 1.0}, {"ok": 0.5, "tool_error": 0.5})
0.5
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.drift.figures import Window
from corral.exceptions import ConfigError
from corral.policy.sections import Monitoring
from corral.record import figures

Verdict = Literal["ok", "drift", "too_few_runs", "no_data", "not_judged"]

#: How many runs are named for each figure that drifted.
TOP_RUNS = 5


@dataclass(frozen=True, kw_only=True, slots=True)
class TopRun:
    """A recent run that moved a figure: its id, when it started, its value of the figure."""

    run_id: str
    started_at: float
    value: float | str


@dataclass(frozen=True, kw_only=True, slots=True)
class Judged:
    """One figure: both windows' values, the change, the threshold and the verdict."""

    figure: str
    baseline: float | Mapping[str, float] | None
    recent: float | Mapping[str, float] | None
    change: float | None
    threshold: float | None
    verdict: Verdict
    top_runs: Sequence[TopRun] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Cause:
    """Something that differs between the windows: a ``model``, a ``tool`` definition or
    the ``policy``; ``before`` and ``after`` are what each window had."""

    kind: Literal["model", "tool", "policy"]
    name: str
    before: Sequence[str]
    after: Sequence[str]
    first_run: str
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """Every tracked figure judged, and what changed between the windows."""

    baseline: Window
    recent: Window
    min_runs: int
    judged: Sequence[Judged]
    causes: Sequence[Cause] = field(default_factory=tuple)

    @property
    def enough_runs(self) -> bool:
        return min(len(self.baseline.runs), len(self.recent.runs)) >= self.min_runs

    @property
    def drifted(self) -> list[Judged]:
        return [j for j in self.judged if j.verdict == "drift"]


def parse_threshold(text: str) -> tuple[str, float | None]:
    """``NAME=VALUE``: a figure and its threshold, a number (``0.25``), a percentage
    (``25%``) or ``off``; :class:`ConfigError` naming what is wrong otherwise.

    >>> parse_threshold("tool_calls_per_run=25%"), parse_threshold("stop_reason=0.1")
    (('tool_calls_per_run', 0.25), ('stop_reason', 0.1))
    """
    name, sep, raw = text.partition("=")
    name, raw = name.strip(), raw.strip()
    if not sep or name not in figures.FIGURES:
        raise ConfigError(
            f"--threshold: NAME=VALUE with NAME one of {', '.join(figures.FIGURES)}, got {text!r}"
        )
    if raw.lower() == "off":
        return name, None
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw) / (100 if percent else 1)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0) or (name == "stop_reason" and value > 1):
        most = " at most 1 (a distance)" if name == "stop_reason" else ""
        raise ConfigError(
            f"--threshold {name}: must be a number above 0{most}, a percentage or off, got {raw!r}"
        )
    return name, value


def change(baseline: float, recent: float) -> float:
    """The relative change from ``baseline`` to ``recent`` (infinite from 0 to more)."""
    if baseline == 0:
        return 0.0 if recent == 0 else math.inf
    return (recent - baseline) / abs(baseline)


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    """Half the sum of the differences between two distributions' shares (0 to 1)."""
    return round(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in p.keys() | q.keys()) / 2, 12)


def compare(
    baseline: Window,
    recent: Window,
    monitoring: Monitoring,
    *,
    thresholds: Mapping[str, float | None] | None = None,
) -> Comparison:
    """Judge the figures ``monitoring.track`` names (every figure when it names none), each
    against its threshold: ``thresholds`` given here, else the policy's."""
    tracked = [name for name in figures.FIGURES if name in monitoring.track] or list(
        figures.FIGURES
    )
    limits: dict[str, float | None] = {
        name: getattr(monitoring.thresholds, name) for name in figures.FIGURES
    }
    limits.update(thresholds or {})
    enough = min(len(baseline.runs), len(recent.runs)) >= monitoring.min_runs
    judged = [_judge(name, baseline, recent, limits[name], enough) for name in tracked]
    return Comparison(
        baseline=baseline,
        recent=recent,
        min_runs=monitoring.min_runs,
        judged=judged,
        causes=causes(baseline, recent) if baseline.runs and recent.runs else (),
    )


def _judge(
    name: str, baseline: Window, recent: Window, threshold: float | None, enough: bool
) -> Judged:
    if name == "stop_reason":
        before: Any = baseline.stop_mix if baseline.runs else None
        after: Any = recent.stop_mix if recent.runs else None
        moved = None if before is None or after is None else total_variation(before, after)
    else:
        before, after = baseline.number(name), recent.number(name)
        moved = None if before is None or after is None else change(before, after)
    verdict: Verdict
    if not enough:
        verdict = "too_few_runs"
    elif moved is None:
        verdict = "no_data"
    elif threshold is None:
        verdict = "not_judged"
    else:
        verdict = "drift" if abs(moved) > threshold else "ok"
    top = _top_runs(name, before, recent) if verdict == "drift" else ()
    return Judged(
        figure=name,
        baseline=before,
        recent=after,
        change=moved,
        threshold=threshold,
        verdict=verdict,
        top_runs=top,
    )


def _top_runs(name: str, before: Any, recent: Window) -> list[TopRun]:
    """The recent runs that moved figure ``name`` most, in the direction it moved."""
    if name == "stop_reason":
        after = recent.stop_mix
        grew = sorted(
            (r for r in after if after[r] > before.get(r, 0.0)),
            key=lambda r: (before.get(r, 0.0) - after[r], r),
        )
        rank = {reason: i for i, reason in enumerate(grew)}
        runs = [r for r in recent.runs if figures.stop_reason(r) in rank]
        runs.sort(key=lambda r: (rank[figures.stop_reason(r)], -r.started_at))
        return [
            TopRun(run_id=r.run_id, started_at=r.started_at, value=figures.stop_reason(r))
            for r in runs[:TOP_RUNS]
        ]
    moved = recent.number(name)
    sign = 1.0 if moved is not None and moved >= before else -1.0
    scored = [
        (sign * (v - before), r.started_at, r, v)
        for r in recent.runs
        if (v := figures.value(name, r)) is not None and sign * (v - before) > 0
    ]
    scored.sort(key=lambda s: (-s[0], -s[1]))
    return [
        TopRun(run_id=r.run_id, started_at=r.started_at, value=round(v, 6))
        for _, _, r, v in scored[:TOP_RUNS]
    ]


def causes(baseline: Window, recent: Window) -> list[Cause]:
    """What the recent window's runs used that the baseline's did not, or the reverse: model
    ids, tool definitions (by digest) and policies (by digest)."""
    out = []
    before, after = baseline.models, recent.models
    for model in sorted(after.keys() - before.keys()):
        out.append(
            Cause(kind="model", name=model, before=sorted(before), after=sorted(after),
                  first_run=after[model].run_id,
                  text=f"model {model} is new (first in run {after[model].run_id})")
        )  # fmt: skip
    for model in sorted(before.keys() - after.keys()):
        out.append(
            Cause(kind="model", name=model, before=sorted(before), after=sorted(after),
                  first_run="", text=f"model {model} is no longer used")
        )  # fmt: skip
    old, new = baseline.tool_digests, recent.tool_digests
    for tool in sorted(new.keys() | old.keys()):
        was, now = old.get(tool, {}), new.get(tool, {})
        fresh = [d for d in now if d not in was]
        if not was and now:
            first = now[next(iter(now))].run_id
            text = f"tool {tool} is newly offered (first in run {first})"
        elif was and not now:
            first, text = "", f"tool {tool} is no longer offered"
        elif fresh:
            first = now[fresh[0]].run_id
            text = (
                f"tool {tool}'s definition changed: {', '.join(was)} -> {', '.join(fresh)} "
                f"(first in run {first})"
            )
        else:
            continue
        out.append(
            Cause(kind="tool", name=tool, before=list(was), after=list(now), first_run=first,
                  text=text)
        )  # fmt: skip
    policies, later = baseline.policies, recent.policies
    fresh = [d for d in later if d not in policies]
    if fresh and policies:
        first = later[fresh[0]].run_id
        out.append(
            Cause(kind="policy", name="policy", before=list(policies), after=list(later),
                  first_run=first,
                  text=f"the policy changed: {', '.join(policies)} -> {', '.join(fresh)} "
                  f"(first in run {first})")
        )  # fmt: skip
    return out
