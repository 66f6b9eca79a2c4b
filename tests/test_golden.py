"""Golden tasks: the repository's suite passes against its baseline, a drifted model fails
it with a report naming task and figure, ``--repeat`` tolerates what the baseline saw, and
``--json`` keeps its shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "golden"
SUITE = EXAMPLES / "support.yaml"
BASELINE = EXAMPLES / "support.baseline.json"
DRIFTED = EXAMPLES / "support.drifted.yaml"


def golden(*args: str) -> Any:
    """``corral golden run ARGS`` in this process, stdout and stderr apart; tables one row
    a line (wide enough, whatever the terminal)."""
    return CliRunner(env={"COLUMNS": "250"}).invoke(app, ["golden", "run", *args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_repository_suite_passes_against_its_baseline() -> None:
    """examples/golden/support.yaml with its own scripts meets every expectation and drifts
    from examples/golden/support.baseline.json in nothing: exit 0."""
    result = golden(str(SUITE), "--model", "scripted", "--baseline", str(BASELINE))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "0 of 24 figures drifted" in result.stdout
    assert "golden suite support: passed" in result.stdout
    for task in ("refund-policy", "order-status", "vendor-outage", "refund-refused"):
        assert task in result.stdout


def test_a_drifted_model_fails_the_suite_naming_each_task_and_figure() -> None:
    """More tool calls, a different answer and more tokens per request: exit 1, and the
    drift table names each task with the figure that moved."""
    result = golden(str(SUITE), "--model", f"scripted:{DRIFTED}", "--baseline", str(BASELINE))
    assert result.exit_code == 1, result.stdout + result.stderr
    out = result.stdout
    assert "drift against" in out and "golden suite support: FAILED" in out
    rows = {tuple(line.split()[:2]) for line in out.splitlines() if line.strip().endswith("drift")}
    assert ("refund-policy", "tool_calls") in rows
    assert ("order-status", "answer") in rows
    assert ("order-status", "tokens_per_request") in rows
    assert ("vendor-outage", "tokens_per_request") in rows
    assert not any(task == "refund-refused" for task, _ in rows)  # it played the same
    assert "similarity >= 0.90 (got 0.32)" in out
    # and the expectations the drifted runs broke, in their own table
    assert "failed expectations" in out and "<= 2" in out


def test_the_drift_report_as_json_has_a_stable_shape() -> None:
    """``--json``: one object, every task's runs and failures, every compared figure."""
    result = golden(
        str(SUITE), "--model", f"scripted:{DRIFTED}", "--baseline", str(BASELINE), "--json"
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {
        "store",
        "suite",
        "model",
        "repeat",
        "ok",
        "baseline",
        "tasks",
        "failures",
        "drift",
        "drifted",
    }
    assert report["ok"] is False and report["suite"] == "support" and report["repeat"] == 1
    task = report["tasks"][0]
    assert set(task) == {"id", "ok", "runs", "failures"}
    assert set(task["runs"][0]) == {
        "stop_reason",
        "answer",
        "tool_calls",
        "by_tool",
        "requests",
        "tokens",
        "tokens_per_request",
        "usd",
        "error",
    }
    assert task["failures"][0] == {
        "task": "refund-policy",
        "run": 1,
        "check": "tool_calls",
        "expected": "<= 2",
        "got": "3",
    }
    drift = {(d["task"], d["figure"]): d for d in report["drift"]}
    assert drift[("refund-policy", "tool_calls")] == {
        "task": "refund-policy",
        "figure": "tool_calls",
        "baseline": "1",
        "now": "3",
        "allowed": "1",
        "verdict": "drift",
    }
    assert report["drifted"] == sum(d["verdict"] == "drift" for d in report["drift"])
    assert report["failures"] == sum(len(t["failures"]) for t in report["tasks"])


def test_a_saved_baseline_is_what_the_next_run_compares_with(tmp_path: Path) -> None:
    """``--save-baseline`` writes the run's figures; run again against it: nothing drifted."""
    saved = tmp_path / "b.json"
    first = golden(str(SUITE), "--model", "scripted", "--save-baseline", str(saved), "--json")
    assert first.exit_code == 0, first.stderr
    again = golden(str(SUITE), "--model", "scripted", "--baseline", str(saved), "--json")
    report = json.loads(again.stdout)
    assert again.exit_code == 0 and report["drifted"] == 0
    assert {d["verdict"] for d in report["drift"]} == {"ok"}
    assert json.loads(saved.read_text())["tasks"] == json.loads(BASELINE.read_text())["tasks"]


SMALL = """
suite: small
tools:
  kb.search: {responses: [{returns: "14 days"}]}
tasks:
  - id: refund
    task: How long do refunds take?
    script:
      - {call: kb.search, args: {q: refund}, input_tokens: 100, output_tokens: 10}
      - {answer: "14 days", input_tokens: 120, output_tokens: 10}
    expect: {stop_reason: ok}
  - id: other
    task: Anything else?
    script: [{answer: "no", input_tokens: 50, output_tokens: 5}]
"""


def test_tasks_new_to_the_suite_or_gone_from_it_are_named_not_drift(tmp_path: Path) -> None:
    """A task the baseline lacks is ``new``, one the suite dropped ``gone``: exit 0."""
    suite = write(tmp_path / "s.yaml", SMALL)
    base = tmp_path / "b.json"
    assert golden(str(suite), "--model", "scripted", "--save-baseline", str(base)).exit_code == 0
    data = json.loads(base.read_text())
    data["tasks"]["retired"] = data["tasks"].pop("other")
    base.write_text(json.dumps(data))
    result = golden(str(suite), "--model", "scripted", "--baseline", str(base), "--json")
    assert result.exit_code == 0, result.stdout
    verdicts = {(d["task"], d["verdict"]) for d in json.loads(result.stdout)["drift"]}
    assert ("other", "new") in verdicts and ("retired", "gone") in verdicts


# -- --repeat: a tolerance for what the baseline saw -----------------------------------------

REPEATED = """
suite: noisy
tools:
  kb.search: {responses: [{returns: "14 days"}]}
thresholds:
  tokens_per_request: {rel: 0.05}
  answer_similarity: 0.5
tasks:
  - id: refund
    task: How long do refunds take?
    expect: {stop_reason: ok, called: [kb.search]}
"""


def test_repeat_allows_the_spread_the_baseline_saw_and_flags_what_goes_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Baseline of 4 runs of a model whose tokens vary (100..130 per request): another 4
    runs in that range pass; a model at 160 per request drifts, named with its range."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    suite = write(tmp_path / "noisy.yaml", REPEATED)
    base = tmp_path / "noisy.json"
    spec = "python:golden_models:noisy"
    saved = golden(str(suite), "--model", spec, "--repeat", "4", "--save-baseline", str(base))
    assert saved.exit_code == 0, saved.stdout + saved.stderr
    runs = json.loads(base.read_text())["tasks"]["refund"]
    spread = sorted(r["tokens_per_request"] for r in runs)
    assert len(runs) == 4 and spread[0] < spread[-1]  # nondeterministic, as promised
    again = golden(str(suite), "--model", spec, "--repeat", "4", "--baseline", str(base), "--json")
    assert again.exit_code == 0, again.stdout
    row = next(d for d in json.loads(again.stdout)["drift"] if d["figure"] == "tokens_per_request")
    assert "–" in row["baseline"] and row["verdict"] == "ok"
    heavy = golden(
        str(suite),
        "--model",
        "python:golden_models:heavy",
        "--repeat",
        "4",
        "--baseline",
        str(base),
        "--json",
    )
    assert heavy.exit_code == 1
    rows = {d["figure"]: d for d in json.loads(heavy.stdout)["drift"]}
    assert rows["tokens_per_request"]["verdict"] == "drift"
    assert rows["tool_calls"]["verdict"] == "ok"


def test_one_run_of_a_noisy_model_is_no_baseline_for_its_spread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A baseline of one run holds one value: four runs of the same noisy model spread past
    its 5% tolerance and drift. --repeat on both sides is how the spread is allowed."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    suite = write(tmp_path / "noisy.yaml", REPEATED)
    base = tmp_path / "one.json"
    spec = "python:golden_models:noisy"
    assert golden(str(suite), "--model", spec, "--save-baseline", str(base)).exit_code == 0
    result = golden(str(suite), "--model", spec, "--repeat", "4", "--baseline", str(base), "--json")
    assert result.exit_code == 1
    row = next(d for d in json.loads(result.stdout)["drift"] if d["figure"] == "tokens_per_request")
    assert row["verdict"] == "drift" and row["now"] == "100–130"


def test_progress_and_tables_go_where_they_belong(tmp_path: Path) -> None:
    """Human output: the tables on stdout; --json: stdout is pure JSON."""
    suite = write(tmp_path / "s.yaml", SMALL)
    human = golden(str(suite), "--model", "scripted", "--jobs", "1")
    assert human.exit_code == 0 and "golden suite small" in human.stdout
    machine = golden(str(suite), "--model", "scripted", "--json", "--jobs", "2")
    assert json.loads(machine.stdout)["ok"] is True


def test_one_store_for_every_run_with_db(tmp_path: Path) -> None:
    """``--db`` runs every task in the store it names, where ``corral runs`` finds them."""
    suite = write(tmp_path / "s.yaml", SMALL)
    url = f"sqlite:///{tmp_path}/golden.db"
    result = golden(str(suite), "--model", "scripted", "--db", url, "--repeat", "2")
    assert result.exit_code == 0, result.stdout + result.stderr
    listed = CliRunner().invoke(app, ["runs", "--db", url, "--json"])
    runs = json.loads(listed.stdout)["runs"]
    assert len(runs) == 4 and {r["agent"] for r in runs} == {"golden:small"}


def test_the_suite_in_the_docs_loads_and_passes(tmp_path: Path) -> None:
    """docs/golden.md's example suite (marked as no policy for tests/test_docs.py) is a
    valid suite whose task meets its expectations."""
    doc = (ROOT / "docs" / "golden.md").read_text(encoding="utf-8")
    marker = doc.index("<!-- no-test: a golden suite, not a policy")
    body = doc[marker:].split("```yaml\n", 1)[1].split("\n```", 1)[0]
    suite = write(tmp_path / "doc.yaml", body)
    result = golden(str(suite), "--model", "scripted", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["tasks"][0]["runs"][0]["by_tool"] == {"kb.search": 1}
