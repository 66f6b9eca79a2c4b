"""``corral replay`` and ``corral prune``: the replay's table and stable JSON, its exit codes,
a replay under another policy file, and pruning (dry run, JSON) that keeps the audit chain
verifiable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.cli.prune import parse_age
from corral.stores.sqlite import SQLiteStore
from corral.testing import ScriptedModel, call, final

RESULT_KEYS = {
    "store",
    "run_id",
    "reproduced",
    "summary",
    "recorded_stop_reason",
    "stop_reason",
    "recorded_usage",
    "usage",
    "steps",
    "decisions",
    "policy_digest",
    "replayed_policy_digest",
    "divergence",
    "notes",
}


@corral.tool(name="kb.read", effect="read")
def kb(query: str) -> str:
    """Search the notes."""
    return f"notes on {query}"


POLICY = {"tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cost_usd": 0.01}}}}


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, str]:
    """A SQLite store with one recorded run of two kb.read calls; (URL, run id)."""
    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    model = ScriptedModel([call("kb.read", query="a"), call("kb.read", query="b"), final("ok")])
    policy = corral.Policy.from_dict(POLICY)
    result = corral.run("go", model=model, tools=[kb], policy=policy, store=store)
    store.close()
    assert result.ok
    return f"sqlite:///{path}", result.run_id


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_replay_prints_a_table_and_exits_0_when_reproduced(recorded: tuple[str, str]) -> None:
    """The text output compares recorded and replayed stop reason and usage, and says so."""
    url, run_id = recorded
    done = invoke("replay", run_id, "--db", url)
    assert done.exit_code == 0, done.output
    assert f"Replay of {run_id}" in done.stdout
    assert "reproduced: same decisions, same stop reason, same usage" in done.stdout
    assert "3 steps · 2 tool calls" in done.stdout and "$0.02" in done.stdout


def test_replay_json_is_stable_and_a_prefix_finds_the_run(recorded: tuple[str, str]) -> None:
    """--json prints exactly the documented keys; a unique prefix of the id is enough."""
    url, run_id = recorded
    done = invoke("replay", run_id[:10], "--db", url, "--json")
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert set(out) == RESULT_KEYS
    assert out["run_id"] == run_id and out["reproduced"] is True and out["divergence"] is None
    assert out["usage"] == out["recorded_usage"] and out["usage"]["tool_calls"] == 2


def test_replay_under_another_policy_reports_the_divergence(
    recorded: tuple[str, str], tmp_path: Path
) -> None:
    """--policy FILE replays under that policy: one kb.read call at most diverges at step 4
    (the second call), exit 1, in text and JSON."""
    url, run_id = recorded
    stricter = tmp_path / "stricter.yaml"
    stricter.write_text(
        "tools:\n  allow: [kb.read]\n  specs:\n    kb.read: {cost_usd: 0.01, max_calls: 1}\n"
    )
    done = invoke("replay", run_id, "--db", url, "--policy", str(stricter))
    assert done.exit_code == 1
    assert "diverged at step 4 (policy_changed)" in done.stdout
    assert "recorded: tool_call" in done.stdout
    out = json.loads(
        invoke("replay", run_id, "--db", url, "--policy", str(stricter), "--json").stdout
    )
    assert out["divergence"]["step"] == 4 and out["divergence"]["reason"] == "policy_changed"
    assert out["stop_reason"] == "max_tool_calls"


def test_replay_of_an_unknown_run_or_a_bad_policy_file(
    recorded: tuple[str, str], tmp_path: Path
) -> None:
    """No such run: exit 1 with one line; a policy file that is invalid: exit 2."""
    url, _ = recorded
    done = invoke("replay", "nope", "--db", url)
    assert done.exit_code == 1 and "no run 'nope'" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("budgets: {max_steps: -3}\n")
    done = invoke("replay", "nope", "--db", url, "--policy", str(bad))
    assert done.exit_code == 2 and "max_steps" in done.stderr


def test_prune_then_audit_verify_passes_and_replay_says_pruned(recorded: tuple[str, str]) -> None:
    """A dry run lists the run and changes nothing; prune drops its body (JSON says which);
    `corral audit verify` still passes; `corral replay` says the recording was pruned."""
    url, run_id = recorded
    dry = invoke("prune", "--older-than", "0s", "--db", url, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    out = json.loads(dry.stdout)
    assert set(out) == {"store", "older_than", "cutoff", "dry_run", "pruned", "runs"}
    assert out["dry_run"] is True and out["runs"] == [run_id]
    assert invoke("replay", run_id, "--db", url).exit_code == 0
    kept = invoke("prune", "--older-than", "30d", "--db", url)
    assert kept.exit_code == 0 and "pruned the recordings of 0 runs" in kept.stdout
    done = invoke("prune", "--older-than", "0s", "--db", url)
    assert done.exit_code == 0 and "pruned the recordings of 1 run " in done.stdout
    assert "digests stay" in done.stdout
    verified = invoke("audit", "verify", "--db", url)
    assert verified.exit_code == 0, verified.output
    again = invoke("replay", run_id, "--db", url, "--json")
    assert again.exit_code == 1
    assert json.loads(again.stdout)["divergence"]["reason"] == "not_replayable"
    assert "pruned" in json.loads(again.stdout)["summary"]


def test_prune_refuses_an_age_it_cannot_read(recorded: tuple[str, str]) -> None:
    """--older-than must be a whole number of s, m, h or d: exit 2, one line."""
    url, _ = recorded
    done = invoke("prune", "--older-than", "a month", "--db", url)
    assert done.exit_code == 2 and "--older-than" in done.stderr


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from("smhd"))
def test_ages_are_read_in_seconds(n: int, unit: str) -> None:
    """Every whole number with a unit reads as that many seconds, minutes, hours or days."""
    assert parse_age(f"{n}{unit}") == n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


@given(st.text(max_size=12))
def test_anything_else_is_refused(text: str) -> None:
    """Text that is not a number and a unit is a ConfigError, never a wrong age."""
    stripped = text.strip()
    if stripped[:-1].isascii() and stripped[:-1].isdigit() and stripped[-1:] in tuple("smhd"):
        return
    with pytest.raises(corral.ConfigError):
        parse_age(text)
