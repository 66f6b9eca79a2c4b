"""``corral show`` gives every kind of event corral writes a readable line: runs producing
each kind (found by reading corral's source), shown through the real command, with no raw
JSON anywhere in the human output."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.controls.approvals import ApprovalDecision
from corral.stores import open_store
from corral.testing import ScriptedModel, call, error, final, turn
from sources import gc_paused

SOURCE = Path(corral.__file__).parent

#: Events that belong to no run (kill switches, resolved claims: run ids ``-`` and
#: ``operator``): ``corral show`` never lists them.
FLEET_KINDS = {"kill_switch", "idempotency_resolved", "api_key", "tool_definition"}

#: The word in the ``event`` column for each kind (a refusal reads ``denied``).
LABELS = {
    "run_start": {"start", "resumed"},
    "step": {"step"},
    "model_call": {"model call"},
    "tool_call": {"tool call"},
    "denied": {"denied", "would deny"},
    "invalid_args": {"denied"},
    "approval": {"approval", "denied"},
    "approval_requested": {"approval asked"},
    "approval_decision": {"decision"},
    "authorized": {"authorized"},
    "breaker": {"breaker"},
    "retry_budget": {"retry budget"},
    "skipped": {"skipped"},
    "warning": {"warning"},
    "would_stop": {"would stop"},
    "interrupted": {"interrupted"},
    "run_end": {"stop"},
}


def kinds_in_source() -> set[str]:
    """Every event kind corral's code writes: the first argument of ``events.add(...)``,
    ``events.add_trusted(...)`` and ``events.add_trusted_and_flush(...)`` (the run's event
    log), and ``Event(kind=...)``,
    a module-level string constant resolved to its value."""
    found: set[str] = set()
    with gc_paused():  # no finalizer inside ast.parse (tests/sources.py)
        trees = [ast.parse(path.read_text(encoding="utf-8")) for path in SOURCE.rglob("*.py")]
    for tree in trees:
        constants = {
            target.id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            values: list[ast.expr] = []
            owner = func.value if isinstance(func, ast.Attribute) else None
            on_log = isinstance(owner, ast.Attribute) and owner.attr == "events"
            if on_log and name in ("add", "add_trusted", "add_trusted_and_flush") and node.args:
                values.append(node.args[0])
            if name == "Event":
                values += [k.value for k in node.keywords if k.arg == "kind"]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.add(value.value)
                elif isinstance(value, ast.Name) and value.id in constants:
                    found.add(constants[value.id])
    return found


@corral.tool(name="kb.read", effect="read")
def kb(q: str) -> str:
    return f"answer to {q}"


@corral.tool(name="vendor.read", effect="read")
def vendor(q: str) -> str:
    raise ConnectionError("vendor down")


@corral.tool(name="flaky.read", effect="read")
def flaky(q: str) -> str:
    raise ConnectionError("flaky")


@corral.tool(name="news.read", effect="read")
def news(q: str) -> str:
    return "headlines"


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
    run = corral.Run(corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}}), tools=[kb],
                     store=sys.argv[1], tenant="acme", agent="crashy")
    run.__enter__()
    run.call("kb.read", {"q": "a"})
    os._exit(9)  # the process dies mid-run
    """
)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite store holding runs that, between them, write every kind of event."""
    url = f"sqlite:///{tmp_path_factory.mktemp('show-events') / 'corral.db'}"
    tools = [kb, vendor, flaky, news, send]

    def run(script: list[Any], policy: dict[str, Any], **kw: Any) -> None:
        corral.run(
            "a task",
            model=ScriptedModel(script),
            tools=tools,
            policy=corral.Policy.from_dict(policy),
            store=url,
            tenant="acme",
            agent="bot",
            **kw,
        )

    reads = {"tools": {"allow": ["kb.read"]}}
    # start, model calls, a tool call and a cached one, a warning (allowed, not registered)
    run(
        [call("kb.read", q="a"), call("kb.read", q="a"), final("done")],
        {"tools": {"allow": ["kb.read", "ghost.read"]}},
    )
    run([turn(call("vendor.read", q="a"), call("kb.read", q="b"))], reads)  # denied, skipped
    run([call("kb.read", q=5), final("x")], reads)  # invalid arguments, handed back
    writes = {"tools": {"allow": ["mail.send"]}}
    run(  # approval by a callback, then the write authorized
        [call("mail.send", to="x"), final("sent")],
        writes,
        approver=lambda req: ApprovalDecision(approved=True, approver="ops@example", reason="ok"),
    )
    run(  # the store's queue: asked, then expired (a decision)
        [call("mail.send", to="y"), final("sent")],
        {**writes, "writes": {"approval_timeout_seconds": 0.2}},
    )
    degrade = {"min_calls": 1, "retry_budget_ratio": 0, "retry_budget_floor": 0}
    failing = {"tools": {"allow": ["vendor.read"]}, "degrade": degrade}
    run([call("vendor.read", q="a"), final("x")], failing)  # the breaker opens
    run([call("vendor.read", q="a"), final("x")], failing)  # then refuses (degraded)
    run(  # no retry left in the budget
        [call("flaky.read", q="a"), final("x")],
        {
            "tools": {"allow": ["flaky.read"], "specs": {"flaky.read": {"retries": 1}}},
            "degrade": {"retry_budget_ratio": 0, "retry_budget_floor": 0},
        },
    )
    run([call("news.read", q="z"), final("x")], {**reads, "mode": "observe"})  # would stop
    run([error(RuntimeError("model endpoint down"))], reads)  # a failed model call
    with corral.Run(corral.Policy.from_dict(reads), tools=tools, store=url, agent="own") as own:
        own.step()  # a step of the caller's own loop
        with own.model_call(model="my-model", input_tokens=10):
            pass  # never settled: charged its reservation
        own.finish("ok")
    crash = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, url], capture_output=True, text=True, timeout=60
    )
    assert crash.returncode == 9, crash.stderr
    open_store(url).close()  # opened afresh, the store marks the dead run interrupted
    yield url


def show(url: str, run_id: str, *more: str) -> Any:
    """``corral show`` in this process, wide enough that each event stays on one line."""
    return CliRunner(env={"COLUMNS": "400"}).invoke(app, ["show", run_id, "--db", url, *more])


def run_ids(url: str) -> list[str]:
    result = CliRunner().invoke(app, ["runs", "--db", url, "--json"])
    assert result.exit_code == 0, result.stderr
    return [r["run_id"] for r in json.loads(result.stdout)["runs"]]


def test_the_runs_write_every_kind_of_event_corral_writes(store_url: str) -> None:
    """Between them the fixture's runs write every kind the source writes (fleet records
    aside), so the next test sees them all; a new kind must be added here."""
    seen = set()
    for run_id in run_ids(store_url):
        timeline = json.loads(show(store_url, run_id, "--json").stdout)["timeline"]
        seen |= {entry["kind"] for entry in timeline}
    expected = kinds_in_source() - FLEET_KINDS
    assert expected <= set(LABELS), f"no expected wording for {expected - set(LABELS)}"
    assert seen == expected


def test_every_event_has_a_readable_line_and_no_raw_json(store_url: str) -> None:
    """Each timeline entry is one line whose event column is its kind's wording, and no line
    of the human output is (or holds) raw JSON."""
    for run_id in run_ids(store_url):
        timeline = json.loads(show(store_url, run_id, "--json").stdout)["timeline"]
        result = show(store_url, run_id)
        assert result.exit_code == 0, result.stderr
        lines = result.stdout.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["t", "event"])
        rows = lines[header + 1 : header + 1 + len(timeline)]
        for entry, row in zip(timeline, rows, strict=True):
            event = re.split(r"\s{2,}", row.strip())[1]
            assert event in LABELS[entry["kind"]], (entry["kind"], row)
        for line in lines:
            assert "{" not in line and '":' not in line, line
            with pytest.raises(ValueError):
                json.loads(line)


def test_an_event_of_an_unknown_kind_reads_as_key_value_pairs(tmp_path: Path) -> None:
    """An event this version has no wording for (a newer corral wrote it) is shown as
    ``key=value`` pairs, nested values flattened, never as JSON."""
    from corral.stores.base import Event
    from corral.stores.sqlite import SQLiteStore

    url = f"sqlite:///{tmp_path / 'corral.db'}"
    with corral.Run(corral.Policy.from_dict({}), store=url) as run:
        run.finish("ok")
    store = SQLiteStore(tmp_path / "corral.db")
    try:
        future = {"scope": "tenant", "limits": {"usd": "5", "calls": 3}, "tools": ["a", "b"]}
        store.append_events(
            [Event(run_id=run.id, seq=99, kind="budget_raised", at=time.time(), data=future)]
        )
    finally:
        store.close()
    out = show(url, run.id).stdout
    line = next(x for x in out.splitlines() if "budget_raised" in x)
    assert "limits.calls=3 · limits.usd=5 · scope=tenant · tools=a, b" in line
    assert "{" not in out
