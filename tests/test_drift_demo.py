"""``corral drift`` on the demo's agent, run by the simulator into a real SQLite store: two
windows of the same behaviour pass; a window where the agent looks tickets up in the
knowledge base four times (its tool-call mix changed on purpose) is flagged, the figure and
the runs that moved it named."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli.app import app
from corral.cli.drift import drift_command
from corral.sim import sides
from corral.sim.world import Scenario, make_tasks
from corral.stores.sqlite import SQLiteStore

RUNS = 12
AGENT = sides.AGENT


@dataclass(frozen=True)
class Day:
    """A store holding three windows of the demo's runs and when each began and ended."""

    url: str
    start: float
    same: float
    changed: float
    end: float


def simulate(store: SQLiteStore, *, seed: int, prefix: str, kb_lookups: int = 1) -> None:
    scenario = Scenario(kb_lookups=kb_lookups)
    tasks = make_tasks(seed=seed, runs=RUNS, scenario=scenario)
    sides.run_governed(
        tasks, scenario=scenario, failure_rate=0.0, seed=seed, store=store, run_prefix=prefix
    )


def boundary() -> float:
    """The next whole second, once it has passed: windows given in whole seconds split there."""
    at = math.ceil(time.time())
    time.sleep(max(0.0, at - time.time()) + 0.01)
    return float(at)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    """Seed 1, then seed 2 (the same agent), then seed 3 with ``kb_lookups=4``, each window
    between whole seconds."""
    path = tmp_path_factory.mktemp("drift") / "corral.db"
    store = SQLiteStore(path)
    try:
        start = boundary()
        simulate(store, seed=1, prefix="first")
        same = boundary()
        simulate(store, seed=2, prefix="same")
        changed = boundary()
        simulate(store, seed=3, prefix="more-kb", kb_lookups=4)
        end = boundary()
    finally:
        store.close()
    return Day(url=f"sqlite:///{path}", start=start, same=same, changed=changed, end=end)


def windows(*, start: float, split: float, end: float) -> dict[str, Any]:
    """``--window`` from ``split`` to ``end`` (``now``), ``--against`` from ``start`` to
    ``split``: whole seconds, as the three are."""
    return {"window": f"{end - split:.0f}s", "against": f"{split - start:.0f}s", "now": end}


def drift(
    day: Day, split: float, end: float, capsys: pytest.CaptureFixture[str], **kw: Any
) -> tuple[int, str]:
    """``corral drift`` over the runs from ``split`` to ``end`` against those before: its exit
    code and what it printed."""
    code = drift_command(
        db=day.url, min_runs=10, **windows(start=day.start, split=split, end=end), **kw
    )
    return code, capsys.readouterr().out


def test_two_windows_of_the_same_behaviour_pass(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 2 against seed 1: every figure within its threshold, exit 0."""
    code, out = drift(day, day.same, day.changed, capsys)
    assert code == 0, out
    assert "No drift." in out
    for figure in ("tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"):
        assert figure in out
    assert "DRIFT" not in out


def test_a_changed_tool_call_mix_is_flagged_with_the_runs_that_moved_it(
    day: Day, capsys: pytest.CaptureFixture[str]
) -> None:
    """Four knowledge-base lookups per ticket instead of one: tool calls per run drifts (exit
    1); the runs named are the changed window's, and the tool mix shows kb.read."""
    code, out = drift(day, day.changed, day.end, capsys)
    assert code == 1, out
    assert "Drift: tool_calls_per_run" in out
    assert "Runs that moved tool_calls_per_run most:" in out
    named = [line.split()[0] for line in out.split("most:", 1)[1].splitlines()[1:6]]
    assert len(named) == 5 and all(n.startswith("more-kb-") for n in named), out
    assert "kb.read" in out.split("Tool calls per run, by tool", 1)[1]
    assert "Likely cause: no model, tool definition or policy changed" in out


def test_the_json_report(day: Day, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json``: the windows, each figure judged, the top runs, the tool mix, the causes."""
    code, out = drift(day, day.changed, day.end, capsys, as_json=True)
    body = json.loads(out)
    assert code == 1
    assert set(body) == {
        "store", "now", "tenant", "agent", "min_runs", "enough_runs", "drifted", "baseline",
        "recent", "figures", "tool_mix", "causes",
    }  # fmt: skip
    assert body["drifted"] == ["tool_calls_per_run"]
    assert (body["baseline"]["runs"], body["recent"]["runs"]) == (2 * RUNS, RUNS)
    calls = next(f for f in body["figures"] if f["figure"] == "tool_calls_per_run")
    assert set(calls) == {
        "figure", "baseline", "recent", "change", "threshold", "verdict", "top_runs"
    }  # fmt: skip
    assert calls["verdict"] == "drift" and calls["threshold"] == 0.25
    # One kb.read per ticket before, four after: three more calls per run, exactly.
    assert calls["recent"] - calls["baseline"] == pytest.approx(3.0, abs=0.6)
    assert calls["change"] == pytest.approx(calls["recent"] / calls["baseline"] - 1, abs=1e-5)
    assert all(t["run_id"].startswith("more-kb-") for t in calls["top_runs"])
    mix = {row["tool"]: row for row in body["tool_mix"]}
    assert (mix["kb.read"]["baseline"], mix["kb.read"]["recent"]) == (1.0, 4.0)
    stops = next(f for f in body["figures"] if f["figure"] == "stop_reason")
    assert stops["baseline"] == {"ok": 1.0} and stops["change"] == 0.0
    assert body["causes"] == []


def test_a_threshold_turned_off_is_not_judged(day: Day, capsys: pytest.CaptureFixture[str]) -> None:
    """``--threshold tool_calls_per_run=off``: the figure is shown, not judged; no drift."""
    code, out = drift(day, day.changed, day.end, capsys, thresholds=["tool_calls_per_run=off"])
    assert code == 0, out
    assert "not judged" in out


def test_too_few_runs_say_so_and_pass(day: Day) -> None:
    """Through the command line, on the real clock: every run is in the last hour, so the
    baseline week before it has none: nothing is judged, and it says why (exit 0)."""
    result = CliRunner().invoke(
        app, ["drift", "--db", day.url, "--window", "1h", "--against", "7d", "--min-runs", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "Too few runs to judge: the baseline window has fewer than 5" in result.output
    assert "too few runs" in result.output
    as_json = CliRunner().invoke(
        app, ["drift", "--db", day.url, "--window", "1h", "--agent", AGENT, "--json"]
    )
    body = json.loads(as_json.stdout)
    assert (as_json.exit_code, body["enough_runs"], body["drifted"]) == (0, False, [])
    assert (body["agent"], body["baseline"]["runs"], body["recent"]["runs"]) == (AGENT, 0, 3 * RUNS)
    assert {f["verdict"] for f in body["figures"]} == {"too_few_runs"}


def test_tenant_and_agent_narrow_both_windows(day: Day, capsys: pytest.CaptureFixture[str]) -> None:
    """Another agent's runs are not this one's: an agent with none has nothing to judge."""
    code, out = drift(day, day.changed, day.end, capsys, agent="someone-else", as_json=True)
    body = json.loads(out)
    assert code == 0 and (body["baseline"]["runs"], body["recent"]["runs"]) == (0, 0)
    code, out = drift(day, day.changed, day.end, capsys, tenant=sides.TENANT, as_json=True)
    assert code == 1 and json.loads(out)["recent"]["runs"] == RUNS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "yesterday"], "a period is a whole number and a unit"),
        (["--threshold", "speed=1"], "--threshold: NAME=VALUE"),
        (["--threshold", "stop_reason=2"], "at most 1"),
        (["--db", "sqlite:////nonexistent/dir/corral.db"], "no corral store"),
    ],
)
def test_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    """A bad option, or no store where one was named, is an error (exit 2), not drift."""
    result = CliRunner().invoke(app, ["drift", "--db", f"sqlite:///{tmp_path}/x.db", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
