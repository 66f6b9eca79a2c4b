"""``corral report``: would-be stops of observe-mode runs by guard and tool, next to the
enforce-mode stops, over a period; and observe runs as ``corral runs`` lists them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.stores import open_store
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final, flaky_tool

SEARCH, BROWSER = "search.read", "browser.open"
DAY = 86400


@dataclass
class Recorded:
    """A SQLite store holding observe- and enforce-mode runs of two tenants."""

    url: str
    denied: str
    over_budget: str
    both: str
    clean: str
    enforced_denied: str
    enforced_ok: str
    other_tenant: str
    old: str


def policy(mode: str) -> corral.Policy:
    return corral.Policy.from_dict(
        {"mode": mode, "tools": {"allow": [SEARCH]}, "budgets": {"max_tool_calls": 2}}
    )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Real runs in a real SQLite file: four in observe mode (a denied tool, a budget, both,
    none), two enforced, one of another tenant, one from three days ago."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'corral.db'}"
    search = flaky_tool(SEARCH, rate=0.0)
    browser = flaky_tool(BROWSER, rate=0.0)
    tools = [search.tool, browser.tool]

    def run(mode: str, turns: list[Any], *, tenant: str = "acme", agent: str = "bot") -> str:
        result = corral.run(
            "vendor status",
            model=ScriptedModel([*turns, final("done")]),
            tools=tools,
            policy=policy(mode),
            store=url,
            tenant=tenant,
            agent=agent,
        )
        return result.run_id

    calls = [call(SEARCH, query=f"q{i}") for i in range(3)]
    rec = Recorded(
        url=url,
        denied=run("observe", [call(BROWSER, query="x")]),
        over_budget=run("observe", calls, agent="helper"),
        both=run("observe", [call(BROWSER, query="y"), *calls]),
        clean=run("observe", [call(SEARCH, query="z")]),
        enforced_denied=run("enforce", [call(BROWSER, query="x")]),
        enforced_ok=run("enforce", [call(SEARCH, query="x")]),
        other_tenant=run("observe", [call(BROWSER, query="x")], tenant="globex"),
        old=run("observe", [call(BROWSER, query="old")]),
    )
    store = open_store(url)
    store.update_run(rec.old, started_at=time.time() - 3 * DAY)
    store.close()
    return rec


def report(recorded: Recorded, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["report", "--db", recorded.url, "--json", *args])
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def rows(section: dict[str, Any]) -> dict[tuple[str, str, str], tuple[int, int]]:
    return {(r["guard"], r["reason"], r["tool"]): (r["count"], r["runs"]) for r in section["rows"]}


def test_report_counts_would_be_stops_by_guard_reason_and_tool(recorded: Recorded) -> None:
    """Observe runs of the last day: the denied tool and the budget (every call past it, the
    denied one counted too), each with its runs and share of the observe runs; clean runs
    count in the total only."""
    out = report(recorded, "--tenant", "acme")
    obs = out["observe"]
    assert (obs["runs"], obs["affected"], obs["share"], obs["would_stop"]) == (4, 3, 0.75, 5)
    assert rows(obs) == {
        ("allowlist", "tool_denied", BROWSER): (2, 2),
        ("budget", "max_tool_calls", SEARCH): (3, 2),
    }
    by_guard = {g["guard"]: (g["count"], g["runs"], g["share"]) for g in obs["by_guard"]}
    assert by_guard == {"allowlist": (2, 2, 0.5), "budget": (3, 2, 0.5)}
    first = {(f["guard"], f["tool"]): (f["runs"], f["share"]) for f in obs["first"]}
    assert first == {("allowlist", BROWSER): (2, 0.5), ("budget", SEARCH): (1, 0.25)}


def test_report_shows_enforce_mode_stops_for_comparison(recorded: Recorded) -> None:
    """Enforce-mode runs of the period are summarised beside: one of two was stopped, by the
    allowlist, on the same tool observe mode flagged."""
    enf = report(recorded, "--tenant", "acme")["enforce"]
    assert (enf["runs"], enf["stopped"], enf["share"]) == (2, 1, 0.5)
    assert rows(enf) == {("allowlist", "tool_denied", BROWSER): (1, 1)}


def test_report_filters_by_tenant_agent_and_period(recorded: Recorded) -> None:
    """--tenant and --agent narrow the runs; --since leaves older runs out, in any form."""
    everyone = report(recorded)
    assert everyone["runs"] == 7 and everyone["observe"]["runs"] == 5
    assert report(recorded, "--tenant", "globex")["observe"]["affected"] == 1
    helper = report(recorded, "--agent", "helper")
    assert helper["runs"] == 1 and rows(helper["observe"]) == {
        ("budget", "max_tool_calls", SEARCH): (1, 1)
    }
    week = report(recorded, "--since", "7d", "--tenant", "acme")["observe"]
    assert (week["runs"], rows(week)[("allowlist", "tool_denied", BROWSER)]) == (5, (3, 3))
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 60))
    empty = CliRunner().invoke(app, ["report", "--db", recorded.url, "--since", later])
    assert empty.exit_code == 2 and "in the future" in empty.stderr
    two_days = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * DAY))
    assert report(recorded, "--since", two_days)["runs"] == 7


def test_report_prints_a_readable_summary(recorded: Recorded) -> None:
    """Without --json: the share of observe runs that would have stopped, a table by guard,
    reason and tool, and the enforce-mode stops."""
    result = CliRunner().invoke(app, ["report", "--db", recorded.url, "--tenant", "acme"])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "Observe mode: 4 runs; 3 (75.0%) would have been stopped" in text
    assert "allowlist" in text and "tool_denied" in text and BROWSER in text
    assert "max_tool_calls" in text
    assert "Enforce mode: 2 runs; 1 (50.0%) stopped" in text


def test_report_rejects_a_bad_period_and_an_unreachable_store(
    recorded: Recorded, tmp_path: Path
) -> None:
    """A --since that is no period or date, or a URL that names no store, is one line on
    stderr and exit code 2."""
    bad = CliRunner().invoke(app, ["report", "--db", recorded.url, "--since", "yesterday"])
    assert bad.exit_code == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "--since: must be a period such as 30m, 24h, 7d or 2w" in bad.stderr
    assert "'yesterday'" in bad.stderr
    missing = CliRunner().invoke(app, ["report", "--db", "nosuch://x"])
    assert missing.exit_code == 2 and "unsupported store URL scheme 'nosuch'" in missing.stderr


def test_report_of_an_empty_store_says_so(tmp_path: Path) -> None:
    """A store with no runs in the period reports zero runs in both modes, shares 0."""
    SQLiteStore(tmp_path / "empty.db").close()
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(app, ["report", "--db", url, "--json"])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["runs"] == 0 and out["observe"]["share"] == 0.0 and out["enforce"]["rows"] == []
    text = CliRunner().invoke(app, ["report", "--db", url]).stdout
    assert "Observe mode: no runs in the period." in text


def test_runs_lists_what_observe_mode_would_have_stopped(recorded: Recorded) -> None:
    """corral runs shows an observe run's would-be stops: in --json, and beside its stop
    reason in the table."""
    result = CliRunner().invoke(app, ["runs", "--db", recorded.url, "--json"])
    assert result.exit_code == 0, result.stderr
    by_id = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    texts = [w["text"] for w in by_id[recorded.both]["would_stop"]]
    assert texts[0] == "tool_denied:browser.open"
    assert any(t.startswith("max_tool_calls:run") for t in texts)
    assert by_id[recorded.clean]["would_stop"] == []
    assert by_id[recorded.enforced_denied]["would_stop"] == []
    table = CliRunner(env={"COLUMNS": "250"}).invoke(
        app, ["runs", "--db", recorded.url, "--tenant", "acme"]
    )
    assert "would stop: tool_denied:browser.open" in table.stdout


def test_the_result_lists_the_stops_observe_mode_let_through() -> None:
    """RunResult.would_stop names each stop that would have happened, in order, while the
    run itself ends ok."""
    browser = flaky_tool(BROWSER, rate=0.0)
    search = flaky_tool(SEARCH, rate=0.0)
    model = ScriptedModel(
        [call(BROWSER, query="x"), *[call(SEARCH, query=f"q{i}") for i in range(3)], final("ok")]
    )
    result = corral.run(
        "x",
        model=model,
        tools=[browser.tool, search.tool],
        policy=policy("observe"),
        store=MemoryStore(),
    )
    assert result.stop_reason == "ok" and browser.count() == 1
    # Four calls against max_tool_calls 2: the denied call counts, and so do the two past it.
    assert [str(w) for w in result.would_stop] == [
        "tool_denied:browser.open",
        "max_tool_calls:run (limit 2, would be 3)",
        "max_tool_calls:run (limit 2, would be 4)",
    ]
