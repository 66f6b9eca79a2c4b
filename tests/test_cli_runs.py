"""``corral runs`` and ``corral show``: tables, timelines and stable JSON over recorded runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.controls.approvals import ApprovalDecision
from corral.stores.sqlite import SQLiteStore
from corral.testing import ScriptedModel, call, final

P = corral.Policy.from_dict

RUN_KEYS = {
    "run_id",
    "tenant",
    "agent",
    "status",
    "stop_reason",
    "stop",
    "steps",
    "tool_calls",
    "input_tokens",
    "output_tokens",
    "usd",
    "active_seconds",
    "waiting_seconds",
    "started_at",
    "ended_at",
    "task",
    "would_stop",
}
SHOW_RUN_KEYS = RUN_KEYS | {"answer", "policy_digest", "usage"}
ENTRY_KEYS = {"seq", "kind", "at", "t", "data", "denial", "actor"}


@dataclass
class Recorded:
    """A SQLite store holding demo runs, runs of each kind, and one interrupted run."""

    url: str
    ok: str
    denied: str
    budget: str
    approved: str
    other_tenant: str
    interrupted: str
    demo_runs: int
    """How many runs the demo recorded (a re-queued ticket runs again)."""


@corral.tool(name="kb.read", effect="read")
def kb(q: str) -> str:
    return f"answer to {q}"


@corral.tool(name="vendor.read", effect="read")
def vendor(q: str) -> str:
    return "vendor page"


@corral.tool(name="mail.send", effect="write")
def send(to: str) -> str:
    return "sent"


INTERRUPTED = textwrap.dedent(
    """
    import os, sys
    import corral
    @corral.tool(name="kb.read", effect="read")
    def kb(q: str) -> str:
        return "x"
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    run = corral.Run(policy, tools=[kb], store=sys.argv[1], tenant="acme", agent="crashy")
    run.__enter__()
    run.step()
    run.call("kb.read", {"q": "a"})
    print(run.id, flush=True)
    os._exit(9)  # the process dies mid-run
    """
)


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # An explicit environment: readline, once imported, exports COLUMNS to children only.
    env = dict(os.environ) if env is None else env
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, env=env
    )


def corral_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return python("-m", "corral", *args, env=env)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A demo of five tickets (re-queued ones run again), then runs ending ok, denied, on a
    budget, approved, in another tenant, and one whose process died, all in one SQLite file."""
    path = tmp_path_factory.mktemp("cli-runs") / "corral.db"
    url = f"sqlite:///{path}"
    demo = corral_cli("demo", "--db", url, "--runs", "5", "--json")
    assert demo.returncode == 0, demo.stderr
    allow = {"tools": {"allow": ["kb.read", "mail.send"]}, "writes": {"require_approval": False}}

    def run(script: list[Any], policy: dict[str, Any], **kw: Any) -> str:
        kw.setdefault("tenant", "acme")
        kw.setdefault("agent", "support-bot")
        result = corral.run(
            "answer the customer",
            model=ScriptedModel(script),
            tools=[kb, vendor, send],
            policy=P(policy),
            store=url,
            **kw,
        )
        return result.run_id

    ok = run([call("kb.read", q="a"), final("the answer")], allow)
    denied = run([call("vendor.read", q="a")], allow)
    budget = run(
        [call("kb.read", q="a"), call("kb.read", q="b")],
        {**allow, "budgets": {"max_tool_calls": 1}},
    )
    approved = run(
        [call("mail.send", to="x"), final("sent")],
        {**allow, "writes": {"require_approval": True}},
        approver=lambda req: ApprovalDecision(approved=True, approver="ops@example", reason="ok"),
    )
    other = run([final("hi")], allow, tenant="globex", agent="billing-bot")
    crash = python("-c", INTERRUPTED, url)
    assert crash.returncode == 9, crash.stderr
    return Recorded(
        url=url,
        ok=ok,
        denied=denied,
        budget=budget,
        approved=approved,
        other_tenant=other,
        interrupted=crash.stdout.strip(),
        demo_runs=json.loads(demo.stdout)["governed"]["runs"],
    )


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def runs_json(recorded: Recorded, *args: str) -> dict[str, Any]:
    result = invoke("runs", "--db", recorded.url, "--json", *args)
    assert result.exit_code == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


# -- corral runs ---------------------------------------------------------------------------


def test_runs_prints_a_table_newest_first(recorded: Recorded) -> None:
    """`corral runs` (a subprocess) prints every column and the newest run first."""
    done = corral_cli("runs", "--db", recorded.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(line for line in lines if "stop reason" in line)
    for column in ("run", "tenant", "agent", "status", "steps", "tool calls", "USD", "time"):
        assert column in header
    body = [line for line in lines if "run_" in line or "demo-" in line]
    assert recorded.interrupted in body[0]  # started last
    assert "interrupted" in body[0]
    assert any("tool_denied:vendor.read" in line for line in body)
    shown = min(50, recorded.demo_runs + 6)  # `corral runs` shows the newest 50
    assert len(body) == shown and sum("demo-" in line for line in body) == shown - 6


def test_runs_json_is_stable(recorded: Recorded) -> None:
    """`corral runs --json` gives one object with the documented keys, newest first."""
    out = runs_json(recorded)
    assert set(out) == {"store", "count", "runs"}
    assert out["store"] == recorded.url
    assert out["count"] == len(out["runs"]) == min(50, recorded.demo_runs + 6)
    for row in out["runs"]:
        assert set(row) == RUN_KEYS
        assert isinstance(row["usd"], str)
        assert row["started_at"].endswith("Z")
    starts = [row["started_at"] for row in out["runs"]]
    assert starts == sorted(starts, reverse=True)
    by_id = {row["run_id"]: row for row in out["runs"]}
    denied = by_id[recorded.denied]
    assert (denied["status"], denied["stop_reason"]) == ("stopped", "tool_denied")
    assert denied["stop"]["text"] == "tool_denied:vendor.read"
    assert (denied["tenant"], denied["agent"]) == ("acme", "support-bot")
    ok = by_id[recorded.ok]
    assert (ok["status"], ok["stop"], ok["tool_calls"], ok["steps"]) == ("ok", None, 1, 2)


def test_an_interrupted_run_shows_as_such_with_the_usage_its_events_show(
    recorded: Recorded,
) -> None:
    """A run whose process died is ``interrupted``, its steps and calls read from its events."""
    (row,) = runs_json(recorded, "--status", "interrupted")["runs"]
    assert row["run_id"] == recorded.interrupted
    assert (row["steps"], row["tool_calls"], row["stop_reason"]) == (1, 1, None)
    assert row["ended_at"] is not None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tenant", "globex"), {"other_tenant"}),
        (("--agent", "support-bot"), {"ok", "denied", "budget", "approved"}),
        (("--tenant", "acme", "--status", "stopped"), {"denied", "budget"}),
        (("--stop-reason", "max_tool_calls"), {"budget"}),
        (("--agent", "crashy"), {"interrupted"}),
    ],
)
def test_runs_filters(recorded: Recorded, args: tuple[str, ...], expected: set[str]) -> None:
    """Tenant, agent, status and stop-reason filters narrow the list."""
    ids = {row["run_id"] for row in runs_json(recorded, *args)["runs"]}
    assert ids == {getattr(recorded, name) for name in expected}


def test_runs_limit_keeps_the_newest(recorded: Recorded) -> None:
    """``--limit N`` keeps the N newest runs (after filtering)."""
    everything = runs_json(recorded)["runs"]
    assert runs_json(recorded, "--limit", "3")["runs"] == everything[:3]
    stopped = runs_json(recorded, "--status", "stopped", "--limit", "1")["runs"]
    assert [r["run_id"] for r in stopped] == [recorded.budget]


def test_runs_with_bad_options_exit_2_with_one_line() -> None:
    """An unknown status, stop reason or limit is exit 2 and one line on stderr."""
    result = invoke("runs", "--status", "done", "--stop-reason", "oops", "--limit", "0")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    for option in ("--status", "--stop-reason", "--limit"):
        assert option in result.stderr


def test_runs_on_an_empty_store_says_so(tmp_path: Path) -> None:
    """A store with no runs prints a short message and exits 0, naming the store on stderr."""
    SQLiteStore(tmp_path / "empty.db").close()
    result = invoke("runs", "--db", f"sqlite:///{tmp_path / 'empty.db'}")
    assert result.exit_code == 0
    assert result.stdout == "No runs yet.\n"
    assert result.stderr == f"store: sqlite:///{tmp_path / 'empty.db'}\n"


def test_runs_reads_the_store_named_by_corral_db(recorded: Recorded) -> None:
    """Without ``--db`` the store is ``CORRAL_DB``."""
    result = CliRunner(env={"CORRAL_DB": recorded.url}).invoke(
        app, ["runs", "--json", "--tenant", "globex"]
    )
    assert result.exit_code == 0, result.stderr
    assert [r["run_id"] for r in json.loads(result.stdout)["runs"]] == [recorded.other_tenant]


def test_an_unreachable_store_is_exit_1_with_one_line() -> None:
    """A database that cannot be reached is exit 1 and one line on stderr, no traceback."""
    done = corral_cli("runs", "--db", "postgresql://nobody@127.0.0.1:1/corral?connect_timeout=2")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("corral runs: --db: cannot open the store postgresql://")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://x", "unsupported store URL scheme 'mysql'"),
        ("x", "store URL 'x' has no scheme: did you mean sqlite:///x?"),
        ("sqlite:/x.db", "did you mean sqlite:///x.db (relative: ./x.db) or sqlite:////x.db"),
    ],
)
@pytest.mark.parametrize("command", [["runs"], ["show", "run_x"]])
def test_a_bad_store_url_is_exit_2(url: str, message: str, command: list[str]) -> None:
    """A URL that cannot name a store is a usage error: exit 2, one line saying what it meant."""
    result = invoke(*command, "--db", url)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"corral {command[0]}: --db: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["runs"], ["show", "run_x"]])
def test_a_store_that_cannot_be_opened_is_exit_1(command: list[str]) -> None:
    """A file that is no database is an operation failure: exit 1, one line naming it."""
    result = invoke(*command, "--db", "sqlite:////etc/passwd")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"corral {command[0]}: --db: cannot open the store sqlite:////etc/passwd: "
    )
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [["runs"], ["show", "run_x"]])
def test_a_store_that_does_not_exist_is_not_created(command: list[str], tmp_path: Path) -> None:
    """A SQLite path with no store is exit 1, `no corral store at <path>`, and stays absent."""
    path = tmp_path / "missing" / "corral.db"
    result = invoke(*command, "--db", f"sqlite:///{path}")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"corral {command[0]}: no corral store at {path}; ")
    assert result.stderr.count("\n") == 1
    assert not path.parent.exists()


# -- corral show ---------------------------------------------------------------------------


def test_show_prints_a_demo_runs_timeline(recorded: Recorded) -> None:
    """`corral show` (a subprocess) prints model and tool calls, latencies, costs and usage."""
    demo = [r for r in runs_json(recorded)["runs"] if r["run_id"].startswith("demo-")]
    failed = next(r for r in demo if r["stop_reason"] == "tool_error")
    done = corral_cli("show", failed["run_id"], "--db", recorded.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Run {failed['run_id']} · tenant demo · agent browser-agent" in out
    for text in ("model call", "tool call", "browser.open", "stop", "tool_error", "usage: "):
        assert text in out
    assert "$" in out and " s " in out


def test_show_names_the_guard_of_a_denial(recorded: Recorded) -> None:
    """A denied call appears as ``denied`` with its guard and why; the stop follows."""
    result = invoke("show", recorded.denied, "--db", recorded.url)
    assert result.exit_code == 0, result.stderr
    assert "denied" in result.stdout
    assert "allowlist: not_allowed (not in the policy's allowlist)" in result.stdout
    assert "tool_denied:vendor.read" in result.stdout


def test_show_marks_a_budget_stop_and_an_approval(recorded: Recorded) -> None:
    """A budget stop names the ``budget`` guard; an approval names its approver."""
    budget = invoke("show", recorded.budget, "--db", recorded.url)
    assert "budget: max_tool_calls:run (limit 1, would be 2)" in budget.stdout
    approved = invoke("show", recorded.approved, "--db", recorded.url)
    assert "approved by ops@example" in approved.stdout
    assert "answer: sent" in approved.stdout


def test_show_json_is_stable(recorded: Recorded) -> None:
    """`corral show --json` gives the run, its usage and a timeline of documented entries."""
    result = invoke("show", recorded.budget, "--db", recorded.url, "--json")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"store", "run", "timeline"}
    assert set(out["run"]) == SHOW_RUN_KEYS
    assert out["run"]["usage"]["tool_calls"] == 1
    timeline = out["timeline"]
    assert all(set(entry) == ENTRY_KEYS for entry in timeline)
    kinds = [entry["kind"] for entry in timeline]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    assert "model_call" in kinds and "tool_call" in kinds
    times = [entry["t"] for entry in timeline]
    assert times == sorted(times) and times[0] >= 0
    assert timeline[-1]["denial"] == {
        "guard": "budget",
        "reason": "max_tool_calls",
        "why": "run",
        "tool": "kb.read",
        "observed": False,
    }
    assert all(entry["denial"] is None for entry in timeline[:-1])


def test_show_of_an_interrupted_run_says_its_process_died(recorded: Recorded) -> None:
    """An interrupted run shows its status, the ``interrupted`` event and a note."""
    result = invoke("show", recorded.interrupted, "--db", recorded.url)
    assert result.exit_code == 0, result.stderr
    assert "status interrupted" in result.stdout
    assert "is no longer running" in result.stdout
    assert "The run's process died" in result.stdout


def test_show_accepts_a_unique_prefix(recorded: Recorded) -> None:
    """A unique prefix of a recent run's id finds it; an ambiguous one is exit 1."""
    result = invoke("show", recorded.denied[:-3], "--db", recorded.url, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["run"]["run_id"] == recorded.denied
    ambiguous = invoke("show", "demo-", "--db", recorded.url)
    assert ambiguous.exit_code == 1
    assert f"{recorded.demo_runs} runs start with 'demo-'" in ambiguous.stderr


def test_show_of_a_missing_run_is_exit_1(recorded: Recorded) -> None:
    """An unknown run id is exit 1 with one clear line."""
    result = invoke("show", "run_missing", "--db", recorded.url)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"store: {recorded.url}",
        f"corral show: no run 'run_missing' in {recorded.url} (corral runs lists them)",
    ]
