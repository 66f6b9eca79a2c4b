"""What-if: recorded runs evaluated again under another policy, with the shared state carried
from run to run. The demo's day under a stricter policy is predicted run by run as a fresh
day under that policy plays out; window limits, breakers and approvals evolve across runs;
counterfactuals are labelled; the command prints a table, JSON, and an HTML page with charts
that a real browser renders."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.models.base import Price
from corral.record.recording import policy_document
from corral.replay.whatif import Figures, charges, whatif, windows_of
from corral.sim.sides import governed_policy, run_governed
from corral.sim.world import Scenario, Task, make_tasks
from corral.stores import Store, open_store
from corral.testing import MemoryStore, ScriptedModel, call, final

TENANT = "acme"


@corral.tool(name="kb.read", effect="read")
def kb(query: str) -> str:
    """Search the notes."""
    return f"notes on {query}"


@corral.tool(name="fetch", effect="read", cost_usd=1)
def fetch(url: str) -> str:
    """Fetch a page (a dollar a call)."""
    return f"page {url}"


@corral.tool(name="refund.send", effect="write")
def refund(order: str) -> str:
    """Send a refund."""
    return f"refunded {order}"


def policy(**extra: Any) -> corral.Policy:
    data: dict[str, Any] = {
        "tools": {"allow": ["kb.read", "fetch", "refund.send"]},
        "writes": {"require_approval": False},
    }
    data.update(extra)
    return corral.Policy.from_dict(data)


def day(store: Any, runs: int, pol: corral.Policy | None = None, **kw: Any) -> list[str]:
    """``runs`` runs of kb.read, fetch, fetch, answer (each $2 of fetches), in order."""
    ids = []
    for i in range(runs):
        model = ScriptedModel(
            [
                call("kb.read", query=f"ticket {i}"),
                call("fetch", url=f"https://a.example/{i}/1"),
                call("fetch", url=f"https://a.example/{i}/2"),
                final("done"),
            ]
        )
        result = corral.run(
            f"ticket {i}",
            model=model,
            tools=[kb, fetch, refund],
            policy=pol or policy(),
            store=store,
            tenant=TENANT,
            **kw,
        )
        ids.append(result.run_id)
    return ids


# -- the demo's day ------------------------------------------------------------------------
#: The demo's reference policy, its vendor's breaker named for the day.
REFERENCE = governed_policy(dependency="day/vendor")


def _stricter(base: corral.Policy, **changes: Any) -> corral.Policy:
    data = policy_document(base)
    if "max_calls" in changes:
        data["tools"]["specs"]["browser.open"]["max_calls"] = changes["max_calls"]
    if "max_usd" in changes:
        data["limits"] = [{"per": "tenant", "window": "1000d", "max_usd": changes["max_usd"]}]
    return corral.Policy.from_dict(data)


#: The demo's day as both sides of the comparison run it: every vendor call in the outage
#: fails, and a stopped ticket is not queued again.
DAY: dict[str, Any] = {"failure_rate": 1.0, "seed": 7, "run_prefix": "d", "requeue": False}


@pytest.fixture(scope="module")
def demo_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Task], Store]]:
    """The demo's governed day (200 tickets) recorded under the reference policy in SQLite,
    the store only read afterwards."""
    tasks = make_tasks(seed=7, runs=200, scenario=Scenario())
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('day') / 'day.db'}")
    try:
        run_governed(tasks, scenario=Scenario(), store=store, policy=REFERENCE, **DAY)
        yield tasks, store
    finally:
        store.close()


@pytest.mark.parametrize(
    "changes",
    [{"max_usd": 60, "max_calls": 1}, {"max_usd": 20}],
    ids=["tenant-window-and-tool-cap", "tenant-window"],
)
def test_what_if_on_the_demo_predicts_a_fresh_day_under_the_stricter_policy(
    demo_day: tuple[list[Task], Store], changes: dict[str, Any]
) -> None:
    """The demo's governed day (200 tickets, the browser outage, breakers opening) is
    recorded under the reference policy; what-if under a stricter one (a tenant window
    limit on USD, a cap on browser calls) predicts, run by run, what a fresh day under the
    stricter policy does: every prediction labelled exact has the fresh run's stop reason,
    steps, tool calls, tokens and USD. Each run meets the world afresh and starts at its
    ticket's arrival (no re-queue: what-if does not invent the retries a host would add)."""
    tasks, recorded = demo_day
    stricter = _stricter(REFERENCE, **changes)
    report = whatif(stricter, store=recorded, since=0)
    fresh = MemoryStore()
    run_governed(tasks, scenario=Scenario(), store=fresh, policy=stricter, **DAY)
    assert len(report.runs) == 200 and report.evaluated == 200
    exact = [v for v in report.runs if v.exact]
    assert len(exact) >= 80, f"only {len(exact)} predictions exact"
    for v in exact:
        run = fresh.get_run(v.run_id)
        assert run is not None
        assert (v.stop_reason, v.predicted) == (run.stop_reason, Figures.of(run.usage)), v.run_id
    # the policy changed what the day did, and the report says how
    assert report.stopped_earlier.get("max_usd", 0) > 0
    assert report.total("usd", predicted=True) <= Decimal(changes["max_usd"])
    assert report.total("usd", predicted=True) < report.total("usd", predicted=False)
    assert report.no_longer_answered
    # the others are labelled, with where their counterfactual starts
    for v in report.runs:
        if not v.exact:
            assert v.counterfactual_from is not None or v.shared_estimated


# -- shared state across runs --------------------------------------------------------------
def test_a_window_limit_counts_the_runs_before_under_the_new_policy() -> None:
    """Four runs spent $2 each; under a tenant limit of $5 a day the first two still run,
    the third stops at its second fetch and the fourth at its first: the spend the earlier
    runs would have made (not the recorded spend) is what the later ones meet."""
    store = MemoryStore()
    ids = day(store, 4)
    limited = policy(limits=[{"per": "tenant", "window": "1d", "max_usd": 5}])
    report = whatif(limited, store=store, since=0)
    got = [(v.run_id, v.stop_reason, v.predicted.tool_calls) for v in report.runs]
    assert got == [
        (ids[0], "ok", 3),
        (ids[1], "ok", 3),
        (ids[2], "max_usd", 2),
        (ids[3], "max_usd", 1),
    ]
    assert all(v.exact for v in report.runs)
    assert report.total("usd", predicted=True) == Decimal(5)
    # the same day run afresh under the limit agrees
    again = MemoryStore()
    fresh = [corral.replay(i, store=store) for i in ids]  # the recordings replay as they were
    assert all(r.reproduced for r in fresh)
    day(again, 4, limited)
    assert [(r.stop_reason, r.usage["tool_calls"]) for r in again.list_runs(limit=10)][::-1] == [
        (v.stop_reason, v.predicted.tool_calls) for v in report.runs
    ]


def test_spend_the_recorded_runs_met_from_outside_the_selection_is_kept() -> None:
    """Under a limit the recorded policy already had, a run starts from what it met (other
    agents' spend included), corrected by what the runs evaluated before it spent more or
    less: here another agent had spent $3 before, so the tenant's $6 leaves room for one run."""
    store = MemoryStore()
    limited = policy(limits=[{"per": "tenant", "window": "1d", "max_usd": 100}])
    outside = ScriptedModel([call("fetch", url=f"https://o.example/{i}") for i in range(3)]
                            + [final("x")])  # fmt: skip
    corral.run("other", model=outside, tools=[kb, fetch], policy=limited, store=store,
               tenant=TENANT, agent="other")  # fmt: skip
    day(store, 3, limited, agent="mine")
    tighter = policy(limits=[{"per": "tenant", "window": "1d", "max_usd": 6}])
    report = whatif(tighter, store=store, since=0, agent="mine")
    assert [v.stop_reason for v in report.runs] == ["ok", "max_usd", "max_usd"]
    assert [v.predicted.usd for v in report.runs] == [Decimal(2), Decimal(1), Decimal(0)]
    assert not report.notes  # the scope was counted by the recordings


def test_charges_from_events_match_what_the_store_counted() -> None:
    """The spend what-if reads from a run's events (every model call's and executed tool
    attempt's, failures included) is what its window scopes were charged."""
    store = MemoryStore()
    attempts = {"n": 0}

    @corral.tool(name="flaky", effect="read", cost_usd=0.25, retries=2)
    def flaky(q: str) -> str:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise RuntimeError("upstream 502")
        return "ok"

    limited = corral.Policy.from_dict(
        {"tools": {"allow": ["flaky", "fetch"]},
         "limits": [{"per": "tenant", "window": "1d", "max_usd": 100, "max_calls": 100}]}
    )  # fmt: skip
    price = Price(input_usd_per_mtok=Decimal(1000), output_usd_per_mtok=Decimal(2000))
    script = [call("flaky", q="a"), call("fetch", url="https://a.example/1"), final("done")]
    model = ScriptedModel(script, price=price)
    result = corral.run("t", model=model, tools=[flaky, fetch], policy=limited, store=store,
                        tenant=TENANT)  # fmt: skip
    assert result.ok and attempts["n"] == 3
    events = store.events(result.run_id)
    calls = sum(c.tool_calls for c in charges(events))
    usd = sum((c.usd for c in charges(events)), Decimal(0))
    [(scope, _)] = windows_of(limited, TENANT, None, time.time())
    assert store.scope_usage(scope) == (calls, usd)
    assert calls == 4 and usd == Decimal(str(result.usage.usd)) > Decimal("1.75")


def test_breakers_evolve_from_the_evaluated_runs() -> None:
    """A recorded day where a dependency failed in every run, under a policy whose breaker
    opens after two failures: the third run on finds it open and stops with
    dependency_degraded, as a fresh day under that policy does (the breaker's state comes
    from the evaluated runs' own failures, not from the recording's)."""
    calls = {"n": 0}

    @corral.tool(name="vendor", effect="read")
    def vendor(q: str) -> str:
        calls["n"] += 1
        raise RuntimeError("502 Bad Gateway")

    loose = corral.Policy.from_dict(
        {"tools": {"allow": ["vendor"]}, "degrade": {"min_calls": 100, "on_degraded": "stop"}}
    )
    strict = corral.Policy.from_dict(
        {"tools": {"allow": ["vendor"]},
         "degrade": {"min_calls": 2, "failure_rate": 0.5, "cool_down_seconds": 3600,
                     "on_degraded": "stop"}}
    )  # fmt: skip

    def a_day(store: Any, pol: corral.Policy) -> list[corral.RunResult]:
        clock = corral.testing.ManualClock(start=1_000.0)
        out = []
        for i in range(4):
            clock.advance(10)
            model = ScriptedModel([call("vendor", q=str(i)), final("x")])
            out.append(corral.run(f"t{i}", model=model, tools=[vendor], policy=pol, store=store,
                                  clock=clock))  # fmt: skip
        return out

    store = MemoryStore()
    recorded = a_day(store, loose)
    assert [r.stop_reason for r in recorded] == ["tool_error"] * 4
    report = whatif(strict, store=store, since=0)
    fresh = a_day(MemoryStore(), strict)
    assert [v.stop_reason for v in report.runs] == [r.stop_reason for r in fresh]
    assert [v.stop_reason for v in report.runs][2:] == ["dependency_degraded"] * 2
    # the second run's failure opens the breaker; the runs after it are no longer offered
    # the tool, so their first request is not the recorded one: a counterfactual from step 1
    assert [(v.exact, v.counterfactual_from) for v in report.runs] == [
        (True, None),
        (True, None),
        (False, 1),
        (False, 1),
    ]
    assert report.runs[1].divergence is not None
    assert report.runs[1].divergence.message == "vendor error → breaker"


# -- approvals and denials -----------------------------------------------------------------
def _refund_day(store: Any, pol: corral.Policy, approver: Any = None) -> str:
    model = ScriptedModel([call("refund.send", order="A-1"), final("refunded")])
    result = corral.run("refund A-1", model=model, tools=[kb, fetch, refund], policy=pol,
                        store=store, tenant=TENANT, approver=approver)  # fmt: skip
    return result.run_id


def test_recorded_approvals_are_given_again_and_new_ones_are_listed() -> None:
    """A run whose write a human approved replays with that decision; a policy that asks
    for approval where the recorded one did not lists the call as sent for approval, and
    assumes the answer (approve by default; deny on request)."""
    store = MemoryStore()
    asking = policy(writes={"require_approval": True})
    approved = _refund_day(store, asking, approver=lambda request: True)
    assert corral.replay(approved, store=store).reproduced

    other = MemoryStore()
    _refund_day(other, policy())  # no approval asked
    yes = whatif(asking, store=other, since=0)
    assert yes.runs[0].approvals == ("refund.send (assumed approved)",)
    assert yes.runs[0].stop_reason == "ok" and yes.to_dict()["calls_sent_for_approval"] == 1
    no = whatif(asking, store=other, since=0, assume_approvals=False)
    assert no.runs[0].approvals == ("refund.send (assumed denied)",)
    assert no.runs[0].stop_reason == "approval_denied"
    assert no.no_longer_answered == [no.runs[0].run_id]


def test_a_denied_call_is_listed_and_what_follows_is_a_counterfactual() -> None:
    """Under a policy that no longer allows fetch (the model is told, and goes on), the
    fetches are listed as denied, and the run past the first denial is labelled a
    counterfactual: the model was shown something it never saw."""
    store = MemoryStore()
    day(store, 1)
    no_fetch = policy(tools={"allow": ["kb.read"]}, writes={"on_denied": "tell_model"})
    v = whatif(no_fetch, store=store, since=0).runs[0]
    assert v.denied and all(d.startswith("fetch (") for d in v.denied)
    assert not v.exact and v.counterfactual_from is not None
    assert v.predicted.tool_calls == 1 and v.predicted.usd == 0


def test_runs_without_a_recording_are_kept_as_they_were() -> None:
    store = MemoryStore()
    off = policy(recording={"enabled": False})
    day(store, 2, off)
    report = whatif(policy(budgets={"max_tool_calls": 1}), store=store, since=0)
    assert report.evaluated == 0 and report.changed == 0
    assert all("no recording" in str(v.not_evaluated) for v in report.runs)
    assert report.total("usd", predicted=True) == report.total("usd", predicted=False)


def test_an_empty_period_is_refused() -> None:
    with pytest.raises(corral.ConfigError, match="empty"):
        whatif(policy(), store=MemoryStore(), since=10, until=5)


# -- the command -----------------------------------------------------------------------------
def _cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def recorded_day(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = open_store(url, create=True)
    try:
        day(store, 4)
    finally:
        store.close()
    path = tmp_path / "limited.yaml"
    data = policy_document(policy(limits=[{"per": "tenant", "window": "1d", "max_usd": 5}]))
    path.write_text(yaml.safe_dump(data))
    return url, path


def test_the_command_prints_the_report(recorded_day: tuple[str, Path]) -> None:
    url, path = recorded_day
    out = _cli("whatif", "--policy", str(path), "--db", url)
    assert out.exit_code == 0, out.output
    text = out.output
    assert "What-if: 4 runs of the last 7d" in text
    assert "Would have stopped earlier: 2 runs (max_usd 2)" in text
    assert "Tasks no longer answered: 2" in text
    assert "Predicted exactly: 4 of 4" in text
    assert "stops: max_usd" in text and "$8.00" in text and "$5.00" in text


def test_hostile_task_text_is_shown_not_obeyed(tmp_path: Path) -> None:
    """A task holding markup and terminal controls is text on the page and in the table."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    store = open_store(url, create=True)
    try:
        model = ScriptedModel([call("fetch", url="https://a.example/1"), final("x")])
        corral.run("<img src=x onerror=alert(1)>\x1b[2J\u202e", model=model,
                   tools=[kb, fetch], policy=policy(), store=store)  # fmt: skip
    finally:
        store.close()
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy_document(policy(tools={"allow": ["kb.read"]}))))
    page = tmp_path / "r.html"
    out = _cli("whatif", "--policy", str(path), "--db", url, "--html", str(page), "--all")
    assert out.exit_code == 0, out.output
    html = page.read_text()
    assert "<img" not in html and "&lt;img" in html and "\x1b" not in html
    assert "\u202e" not in html


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since"),
        (["--policy", "/nonexistent/p.yaml"], "no such file"),
    ],
)
def test_bad_options_exit_2(recorded_day: tuple[str, Path], args: list[str], message: str) -> None:
    url, path = recorded_day
    given = ["--policy", str(path), *args] if "--policy" not in args else args
    out = _cli("whatif", *given, "--db", url)
    assert out.exit_code == 2 and message in out.output


# Last: while the browser is open, corral.run cannot start in this thread (conftest).
def test_the_command_prints_json_and_writes_html(
    recorded_day: tuple[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``--json`` has the stable shape; ``--html`` writes a self-contained page whose two
    charts and table a real browser renders, with no script and no request elsewhere."""
    url, path = recorded_day
    page = tmp_path / "whatif.html"
    out = _cli("whatif", "--policy", str(path), "--db", url, "--json", "--html", str(page))
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["store"].startswith("sqlite:///") and data["runs"] == 4
    assert data["usd"] == {"recorded": "8", "predicted": "5", "saved": "3"}
    assert data["stopped_earlier"] == {"max_usd": 2}
    assert data["stop_reasons"]["predicted"] == {"max_usd": 2, "ok": 2}
    assert [v["stop_reason"] for v in data["verdicts"]] == ["ok", "ok", "max_usd", "max_usd"]
    assert {"exact", "counterfactual_from", "divergence", "denied", "approvals"} <= set(
        data["verdicts"][0]
    )
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    browser = request.getfixturevalue("browser")  # after the runs: see conftest's browser
    tab = browser.new_page()
    requests: list[str] = []
    tab.on("request", lambda r: requests.append(r.url))
    try:
        tab.goto(page.as_uri())
        assert tab.locator("figure.chart > svg").count() == 2
        assert tab.locator("figure.chart > svg rect").count() >= 3
        assert tab.locator("table tbody tr").count() == 2  # the runs that change
        assert "Runs by stop reason" in tab.inner_text("body")
        assert requests == [page.as_uri()]
    finally:
        tab.close()
