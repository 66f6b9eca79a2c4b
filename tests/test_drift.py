"""Drift, piece by piece: thresholds and distances, verdicts and the runs named, likely causes
from real runs, the per-run metrics of tracked figures, and the check's monitoring item."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import corral
from corral.drift.compare import change, compare, parse_threshold, total_variation
from corral.drift.figures import Window
from corral.drift.report import drift
from corral.exceptions import ConfigError, PolicyError
from corral.policy.readiness import readiness
from corral.policy.sections import Monitoring
from corral.record import figures, metrics
from corral.stores.base import RunFigures
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final

P = corral.Policy.from_dict
TRACK = ["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95", "spend_per_run"]

# -- arithmetic -----------------------------------------------------------------------------

shares = st.dictionaries(
    st.sampled_from(["ok", "tool_error", "budget_exceeded", "interrupted"]),
    st.integers(min_value=1, max_value=50),
    min_size=1,
).map(lambda counts: {k: v / sum(counts.values()) for k, v in counts.items()})


@given(shares, shares)
def test_total_variation_is_a_distance_between_0_and_1(
    p: dict[str, float], q: dict[str, float]
) -> None:
    """Symmetric, 0 for the same mix, within [0, 1], 1 for mixes with no reason in common."""
    assert total_variation(p, q) == total_variation(q, p)
    assert total_variation(p, p) == 0
    assert 0 <= total_variation(p, q) <= 1
    if not p.keys() & q.keys():
        assert total_variation(p, q) == 1


@given(st.floats(min_value=0, max_value=1e9), st.floats(min_value=0, max_value=1e9))
def test_change_is_relative_and_signed(before: float, after: float) -> None:
    """``change`` says how far and which way; from 0, any rise is infinite."""
    moved = change(before, after)
    if before == 0:
        assert moved == (0.0 if after == 0 else math.inf)
    else:
        assert moved == pytest.approx((after - before) / before)
        assert (moved > 0) == (after > before)


@given(st.sampled_from(figures.FIGURES), st.floats(min_value=1e-6, max_value=1.0))
def test_thresholds_parse_as_numbers_and_percentages(name: str, value: float) -> None:
    """``NAME=0.25`` and ``NAME=25%`` mean the same; ``off`` turns the figure's judgement off."""
    assert parse_threshold(f"{name}={value!r}") == (name, value)
    assert parse_threshold(f"{name}={value * 100!r}%")[1] == pytest.approx(value)
    assert parse_threshold(f"{name}=off") == (name, None)


@pytest.mark.parametrize("text", ["tokens", "speed=1", "latency_p95=0", "latency_p95=-1",
                                  "latency_p95=nan", "latency_p95=inf", "stop_reason=1.5",
                                  "spend_per_run=lots"])  # fmt: skip
def test_bad_thresholds_are_refused(text: str) -> None:
    """A threshold names a figure and a value above 0 (a distance at most 1)."""
    with pytest.raises(ConfigError):
        parse_threshold(text)


def test_the_percentile_is_a_value_that_occurred() -> None:
    """Nearest rank: the p95 of 20 values is the 19th, of 1 value that value."""
    assert figures.percentile(range(1, 21), 0.95) == 19
    assert figures.percentile([7.0], 0.95) == 7.0


# -- verdicts -------------------------------------------------------------------------------


def runs(n: int, *, start: float = 0.0, **fields: Any) -> list[RunFigures]:
    return [
        RunFigures(run_id=f"r{start + i:.0f}", started_at=start + i, status="ok", **fields)
        for i in range(n)
    ]


def window(rs: list[RunFigures]) -> Window:
    return Window(since=0, until=1e9, runs=rs)


def test_too_few_runs_judge_nothing() -> None:
    """Below ``min_runs`` in either window every figure reads ``too_few_runs``: no drift."""
    c = compare(window(runs(3, tool_calls=1)), window(runs(30, tool_calls=9)), Monitoring())
    assert not c.enough_runs and not c.drifted
    assert {j.verdict for j in c.judged} == {"too_few_runs"}


def test_a_figure_no_run_has_is_no_data() -> None:
    """No tool call in either window: no latency to compare."""
    c = compare(window(runs(20)), window(runs(20)), Monitoring(track=["latency_p95"]))
    assert [(j.figure, j.verdict) for j in c.judged] == [("latency_p95", "no_data")]


def test_a_changed_stop_reason_mix_names_the_runs_of_the_reason_that_grew() -> None:
    """20 ok runs, then 15 ok and 5 tool_error: a distance of 0.25, past 0.15; the runs named
    are the five that stopped with tool_error."""
    before = runs(20, stop_reason="ok")
    after = runs(15, start=100, stop_reason="ok") + runs(5, start=200, stop_reason="tool_error")
    c = compare(window(before), window(after), Monitoring(track=["stop_reason"]))
    (judged,) = c.judged
    assert (judged.verdict, judged.change) == ("drift", 0.25)
    assert sorted(t.run_id for t in judged.top_runs) == [f"r{200 + i}" for i in range(5)]
    assert {t.value for t in judged.top_runs} == {"tool_error"}


def test_a_drop_is_drift_too_and_names_the_runs_lowest() -> None:
    """Spend per run down by half: drift, the cheapest runs named first."""
    before = runs(20, usd=Decimal("1.00"))
    after = runs(19, start=100, usd=Decimal("0.60")) + runs(1, start=200, usd=Decimal("0.10"))
    c = compare(window(before), window(after), Monitoring(track=["spend_per_run"]))
    (judged,) = c.judged
    assert judged.verdict == "drift" and judged.change == pytest.approx(-0.425)
    assert judged.top_runs[0].run_id == "r200"


# -- likely causes, from real runs ------------------------------------------------------------


def kb_tool(description: str) -> corral.Tool:
    def kb_read(q: str) -> str:
        return f"notes on {q}"

    kb_read.__doc__ = description
    return corral.tool(kb_read, name="kb.read", effect="read")


def governed(store: SQLiteStore, *, model: str, description: str, n: int) -> None:
    policy = P({"tools": {"allow": ["kb.read"]}, "monitoring": {"track": TRACK}})
    for i in range(n):
        corral.run(
            "task",
            model=ScriptedModel([call("kb.read", q=str(i)), final("done")], name=model),
            tools=[kb_tool(description)],
            policy=policy,
            store=store,
            tenant="acme",
        )


def test_a_new_model_and_a_changed_tool_definition_are_named(tmp_path: Path) -> None:
    """The recent window's runs used another model and a kb.read described differently: both
    are named, each with the first run that had it."""
    store = SQLiteStore(tmp_path / "corral.db")
    try:
        start = time.time()
        governed(store, model="model-a", description="Read the notes.", n=3)
        split = time.time()
        governed(store, model="model-b", description="Read the internal notes.", n=3)
        end = time.time() + 0.001
        c = drift(store, window=end - split, against=split - start + 1, now=end,
                  monitoring=Monitoring(min_runs=3), tenant="acme")  # fmt: skip
    finally:
        store.close()
    assert (len(c.baseline.runs), len(c.recent.runs)) == (3, 3)
    kinds = {(k.kind, k.name): k for k in c.causes}
    assert set(kinds) == {("model", "model-a"), ("model", "model-b"), ("tool", "kb.read")}
    assert kinds[("model", "model-b")].first_run == c.recent.runs[0].run_id
    tool = kinds[("tool", "kb.read")]
    assert "definition changed" in tool.text and tool.before != tool.after


# -- metrics ----------------------------------------------------------------------------------


@pytest.fixture
def m() -> Iterator[metrics.Metrics]:
    installed = metrics.enable(registry=CollectorRegistry())
    yield installed
    metrics.disable(installed)


def samples(m: metrics.Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(metrics.render(m.registry))
        for s in family.samples
    }


def one_run(monitoring: dict[str, Any], agent: str = "bot") -> None:
    policy = P({"tools": {"allow": ["kb.read"]}, "monitoring": monitoring})
    corral.run(
        "task",
        model=ScriptedModel([call("kb.read", q="a"), call("kb.read", q="b"), final("done")]),
        tools=[kb_tool("Read the notes.")],
        policy=policy,
        store=MemoryStore(),
        tenant="acme",
        agent=agent,
    )


def test_tracked_figures_are_exported_per_run(m: metrics.Metrics) -> None:
    """A run whose policy tracks every figure adds one observation to each, by tenant and
    agent: two tool calls, its stop reason, its tokens per request, p95 and spend."""
    one_run({"track": TRACK})
    got = samples(m)
    who = (("agent", "bot"), ("tenant", "acme"))
    assert got[("corral_run_tool_calls_count", who)] == 1
    assert got[("corral_run_tool_calls_sum", who)] == 2
    assert got[("corral_run_stop_reasons_total", (*who[:1], ("stop_reason", "ok"), who[1]))] == 1
    assert got[("corral_run_tokens_per_request_count", who)] == 1
    assert got[("corral_run_tokens_per_request_sum", who)] > 0
    assert got[("corral_run_tool_latency_p95_seconds_count", who)] == 1
    assert got[("corral_run_spend_usd_count", who)] == 1


def test_only_the_tracked_figures_are_exported(m: metrics.Metrics) -> None:
    """Tracking tool calls only exports that figure; ``metrics: false`` or nothing tracked
    exports none (the run's other metrics go on as ever)."""
    one_run({"track": ["tool_calls_per_run"]}, agent="one")
    one_run({"track": TRACK, "metrics": False}, agent="off")
    one_run({}, agent="none")
    names = {(name, dict(labels).get("agent")) for name, labels in samples(m)}
    assert ("corral_run_tool_calls_count", "one") in names
    assert not {n for n, agent in names if n.startswith("corral_run_") and agent != "one"}
    assert not {n for n, agent in names if agent == "one" and "tokens" in n}
    assert samples(m)[("corral_runs_total", (("status", "ok"), ("stop_reason", "ok")))] == 3


# -- the policy and the check -------------------------------------------------------------------


def monitoring_item(monitoring: dict[str, Any]) -> Any:
    report = readiness(P({"tools": {"allow": ["kb.read"]}, "monitoring": monitoring}))
    return next(item for item in report.items if item.key == "monitoring")


def test_the_check_ticks_monitoring_only_when_drift_monitoring_is_in_force() -> None:
    """The four signals tracked, each with a threshold (defaults count), metrics on."""
    four = TRACK[:4]
    assert monitoring_item({"track": four}).met
    assert monitoring_item({"track": TRACK, "thresholds": {"latency_p95": 1.0}}).met
    missing = monitoring_item({"track": four[:3]})
    assert not missing.met and missing.hint == "add to monitoring.track: latency_p95"
    off = monitoring_item({"track": four, "thresholds": {"stop_reason": None}})
    assert not off.met and "monitoring.thresholds.stop_reason" in off.hint
    unexported = monitoring_item({"track": four, "metrics": False})
    assert not unexported.met and "monitoring.metrics: true" in unexported.hint


@pytest.mark.parametrize(
    ("monitoring", "problem"),
    [
        ({"thresholds": {"latency_p95": -1}}, "monitoring.thresholds.latency_p95"),
        ({"thresholds": {"stop_reason": 1.5}}, "monitoring.thresholds.stop_reason"),
        ({"thresholds": {"speed": 0.1}}, "monitoring.thresholds.speed"),
        ({"min_runs": 0}, "monitoring.min_runs"),
        ({"track": ["stop_reason", "stop_reason"]}, "more than once"),
        ({"track": ["cpu"]}, "monitoring.track"),
    ],
)
def test_bad_monitoring_settings_are_refused(monitoring: dict[str, Any], problem: str) -> None:
    """Each mistake is one line naming its path."""
    with pytest.raises(PolicyError) as caught:
        P({"monitoring": monitoring})
    assert any(problem in line for line in caught.value.problems), caught.value.problems
