"""The two windows ``corral drift`` compares, read from the store, and each one's figures.

The recent window is the ``window`` before ``now``; the baseline is the ``against`` before
it. Each holds the ended runs that started in it (one query per window:
:meth:`~corral.stores.base.FigureStore.run_figures`) and gives every figure of
:mod:`corral.record.figures` over its runs: the mean tool calls and spend per run, tokens
per request over all its model calls, the p95 of all its tool calls' latencies, the share
of each stop reason.

>>> parse_period("1d"), parse_period("90s"), parse_period("2w")
(86400.0, 90.0, 1209600.0)
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from corral.exceptions import ConfigError
from corral.record import figures
from corral.stores.base import FigureStore, RunFigures

_PERIOD = re.compile(r"^([1-9][0-9]{0,8})([smhdw])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_period(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``24h``, ``7d`` or ``2w``; :class:`ConfigError` otherwise."""
    m = _PERIOD.match(text.strip())
    if m is None:
        raise ConfigError(f"a period is a whole number and a unit (s, m, h, d, w), got {text!r}")
    return float(int(m.group(1)) * _SECONDS[m.group(2)])


@dataclass(frozen=True, kw_only=True)
class Window:
    """The ended runs that started in ``[since, until)``, oldest first, and their figures."""

    since: float
    until: float
    runs: Sequence[RunFigures]

    def number(self, name: str) -> float | None:
        """Number figure ``name`` over the window's runs; ``None`` when no run has it."""
        runs = self.runs
        if name == "tokens_per_request":
            requests = sum(r.requests for r in runs)
            return sum(r.tokens for r in runs) / requests if requests else None
        if name == "latency_p95":
            return figures.percentile((s for r in runs for s in r.tool_seconds), figures.P95)
        values = [v for r in runs if (v := figures.value(name, r)) is not None]
        return sum(values) / len(values) if values else None

    @cached_property
    def stop_mix(self) -> dict[str, float]:
        """Each stop reason's share of the runs, largest first."""
        counts = Counter(figures.stop_reason(r) for r in self.runs)
        total = len(self.runs)
        return {reason: n / total for reason, n in counts.most_common()}

    @cached_property
    def tool_mix(self) -> dict[str, float]:
        """Each tool's mean calls per run."""
        total: Counter[str] = Counter()
        for r in self.runs:
            total.update(r.tool_calls_by_tool)
        n = len(self.runs) or 1
        return {tool: total[tool] / n for tool in sorted(total)}

    @cached_property
    def models(self) -> dict[str, RunFigures]:
        """Each model id its runs used, with the first run that used it."""
        return _firsts((model, r) for r in self.runs for model in r.models)

    @cached_property
    def tool_digests(self) -> dict[str, dict[str, RunFigures]]:
        """Each offered tool's definition digests, each with the first run that had it."""
        out: dict[str, dict[str, RunFigures]] = defaultdict(dict)
        for r in self.runs:
            for tool, digest in r.tool_digests.items():
                out[tool].setdefault(digest, r)
        return dict(out)

    @cached_property
    def policies(self) -> dict[str, RunFigures]:
        """Each policy digest its runs ran under, with the first run that did."""
        return _firsts((r.policy_digest, r) for r in self.runs if r.policy_digest)


def _firsts(pairs: Iterable[tuple[str, RunFigures]]) -> dict[str, RunFigures]:
    out: dict[str, RunFigures] = {}
    for key, run in pairs:
        out.setdefault(key, run)
    return out


def read_windows(
    store: FigureStore,
    *,
    window: float,
    against: float,
    now: float,
    tenant: str | None = None,
    agent: str | None = None,
) -> tuple[Window, Window]:
    """(baseline, recent): the ``against`` seconds before the recent ``window`` before ``now``."""
    if window <= 0 or against <= 0:
        raise ConfigError("both windows must be longer than zero")
    split = now - window
    start = split - against
    windows = []
    for since, until in ((start, split), (split, now)):
        runs = store.run_figures(since=since, until=until, tenant=tenant, agent=agent)
        windows.append(Window(since=since, until=until, runs=runs))
    return windows[0], windows[1]
