"""What corral says on the standard ``corral`` logger: run starts and ends, tools whose effect
nobody declared, approvals waited on; and nothing per tool call."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.controls import approvals
from corral.testing import FaultyStore, MemoryStore

LOGGER = "corral"


def fresh_policy(**sections: Any) -> corral.Policy:
    """A policy of its own (a unique version label), so that warnings logged once per
    process per policy are logged again in this test."""
    return corral.Policy.from_dict({"version": uuid.uuid4().hex, **sections})


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    """Messages the ``corral`` logger emitted at ``level`` or above."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def lookup(order: str) -> str:
    """Look an order up (declares no effect)."""
    return f"order {order}: shipped"


def test_a_tool_without_a_declared_effect_is_warned_about_at_run_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tool whose effect neither code nor policy declares is a write: the start warning
    names it and says each call will wait for an approval, on the logger once per process
    and in every run's trace."""
    policy = fresh_policy(tools={"allow": ["orders.lookup"]})
    tool = corral.tool(lookup, name="orders.lookup")
    store = MemoryStore()
    caplog.set_level(logging.WARNING, LOGGER)
    for _ in range(2):
        with corral.Run(policy, tools=[tool], store=store, approver=lambda r: True) as run:
            pass
    expected = (
        "tool orders.lookup declares no effect, so it is treated as a write: each call "
        "waits for an approval (up to 900 s) — declare effect='read' in @corral.tool if "
        "it only reads"
    )
    assert lines(caplog, logging.WARNING) == [expected]
    events = store.events(run.id)
    assert [e.data["message"] for e in events if e.kind == "warning"] == [expected]


def test_the_start_warning_says_what_happens_when_writes_need_no_approval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without approvals the undeclared write is still a write: never retried, stopped by
    a disable_writes kill switch; a policy-described tool is told to set its spec."""
    caplog.set_level(logging.WARNING, LOGGER)
    policy = fresh_policy(
        tools={
            "allow": ["orders.lookup", "vendor.fetch"],
            "specs": {"vendor.fetch": {"args_schema": {"type": "object"}}},
        },
        writes={"require_approval": False},
    )
    with corral.Run(policy, tools=[corral.tool(lookup, name="orders.lookup")], store="memory://"):
        pass
    assert lines(caplog, logging.WARNING) == [
        "tool orders.lookup declares no effect, so it is treated as a write: it is never "
        "retried and a disable_writes kill switch stops it — declare effect='read' in "
        "@corral.tool if it only reads",
        "tool vendor.fetch declares no effect, so it is treated as a write: it is never "
        "retried and a disable_writes kill switch stops it — set tools.specs.vendor.fetch"
        ".effect: read if it only reads",
    ]


def test_a_tool_whose_effect_is_declared_anywhere_gets_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An effect declared in code or in the policy (read or write) is not warned about."""
    caplog.set_level(logging.WARNING, LOGGER)
    policy = fresh_policy(
        tools={"allow": ["a.read", "b.read", "c.write"], "specs": {"b.read": {"effect": "read"}}},
        writes={"require_approval": False},
    )
    tools = [
        corral.tool(lookup, name="a.read", effect="read"),
        corral.tool(lookup, name="b.read"),
        corral.tool(lookup, name="c.write", effect="write"),
    ]
    with corral.Run(policy, tools=tools, store="memory://"):
        pass
    assert lines(caplog, logging.WARNING) == []


def test_run_starts_and_ends_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A run logs its start and its end with the stop and the usage, at INFO."""
    caplog.set_level(logging.INFO, LOGGER)
    policy = fresh_policy(tools={"allow": ["a.read"]}, budgets={"max_tool_calls": 1})
    tool = corral.tool(lookup, name="a.read", effect="read")
    with corral.Run(policy, tools=[tool], store="memory://", tenant="acme") as run:
        run.call("a.read", {"order": "1"})
        run.call("a.read", {"order": "2"})
    start, end = lines(caplog)
    assert start == f"run {run.id} started: tenant acme, agent -, policy {policy.digest} (enforce)"
    assert end.startswith(f"run {run.id} stopped max_tool_calls:run (limit 1, would be 2)")
    assert "(0 steps, 1 tool call, $0.00, " in end
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.INFO] * 2


def test_failures_of_governance_and_of_the_agent_are_logged_as_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """control_plane_unavailable and agent_error end runs at WARNING (seen by default);
    bounds and decisions stay at INFO."""
    caplog.set_level(logging.INFO, LOGGER)
    policy = fresh_policy(tools={"allow": ["a.read"]})
    tool = corral.tool(lookup, name="a.read", effect="read")
    broken = FaultyStore(MemoryStore()).fail("append_events", times=None)
    with corral.Run(policy, tools=[tool], store=broken) as run:
        run.call("a.read", {"order": "1"})
    with pytest.raises(KeyError), corral.Run(policy, tools=[tool], store="memory://") as other:
        raise KeyError("oops")
    warned = lines(caplog, logging.WARNING)
    assert len(warned) == 2
    assert warned[0].startswith(f"run {run.id} stopped control_plane_unavailable:store")
    assert warned[1].startswith(f"run {other.id} stopped agent_error:KeyError: 'oops'")


def test_the_allow_path_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Tool calls that pass log nothing, at any level: only the run's start and end."""
    caplog.set_level(logging.DEBUG, LOGGER)
    policy = fresh_policy(tools={"allow": ["a.read"]}, loops={"repeats": 30, "window": 30})
    tool = corral.tool(lookup, name="a.read", effect="read")
    with corral.Run(policy, tools=[tool], store="memory://") as run:
        for i in range(10):
            run.call("a.read", {"order": str(i)})
    assert len(lines(caplog)) == 2


def test_waiting_for_an_approval_is_logged_once_with_the_command_that_decides_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run waiting on the store's queue logs one WARNING naming the approval, the tool
    and the command (with --db when the store is not the default), then the decision."""
    caplog.set_level(logging.INFO, LOGGER)
    monkeypatch.delenv("CORRAL_DB", raising=False)
    url = f"sqlite:///{tmp_path}/approvals.db"
    policy = fresh_policy(tools={"allow": ["refund.send"]})
    tool = corral.tool(lambda amount: "refunded", name="refund.send", effect="write")
    store = corral.open_store(url)
    waiting = threading.Thread(target=_refund, args=(policy, tool, url))
    waiting.start()
    approval_id = _pending_id(store)
    time.sleep(0.3)  # a few polls of the waiting run
    approvals.approve(store, approval_id, approver="alice")
    waiting.join(timeout=10)
    said = [m for m in lines(caplog) if "approval" in m]
    assert said[0] == (
        f"waiting for approval {approval_id} for refund.send — corral approvals approve "
        f"{approval_id} --db sqlite:///{tmp_path}/approvals.db"
    )
    assert said[1].startswith(f"approval {approval_id} for refund.send approved by alice after")
    assert len(said) == 2


def test_the_waiting_line_has_no_db_option_for_the_default_store(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the run's store is the one `corral` opens by default, the command is plain."""
    caplog.set_level(logging.WARNING, LOGGER)
    url = f"sqlite:///{tmp_path}/default.db"
    monkeypatch.setenv("CORRAL_DB", url)
    policy = fresh_policy(tools={"allow": ["refund.send"]})
    tool = corral.tool(lambda amount: "refunded", name="refund.send", effect="write")
    waiting = threading.Thread(target=_refund, args=(policy, tool, None))
    waiting.start()
    store = corral.open_store(url)
    approval_id = _pending_id(store)
    approvals.deny(store, approval_id, approver="alice")
    waiting.join(timeout=10)
    assert f"corral approvals approve {approval_id}" in lines(caplog)[-1]
    assert lines(caplog)[-1].endswith(approval_id)


def _refund(policy: corral.Policy, tool: corral.Tool, url: str | None) -> None:
    with corral.Run(policy, tools=[tool], store=url) as run:
        run.call("refund.send", {"amount": 5})


def _pending_id(store: corral.Store) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pending = store.list_approvals(status="pending")
        if pending:
            return pending[0].id
        time.sleep(0.02)
    raise AssertionError("no approval was filed")


def test_warnings_are_seen_by_default_and_info_is_not(tmp_path: Path) -> None:
    """In a script that configures no logging, corral's warnings reach stderr (Python's
    last-resort handler; corral adds no NullHandler) and its INFO lines do not."""
    script = textwrap.dedent(
        """
        import corral
        policy = corral.Policy.from_dict({"tools": {"allow": ["orders.lookup"]}})
        tool = corral.tool(lambda order: "x", name="orders.lookup")
        with corral.Run(policy, tools=[tool], store="memory://", approver=lambda r: True):
            pass
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=True,
    )
    assert done.stderr.splitlines() == [
        "tool orders.lookup declares no effect, so it is treated as a write: each call "
        "waits for an approval (up to 900 s) — declare effect='read' in @corral.tool if "
        "it only reads"
    ]
    assert done.stdout == ""


def test_the_demo_never_waits_for_an_approval_nor_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`corral demo` declares every tool's effect and files no approval, so it has no waiting
    line or start warning to show (were it to wait, the WARNING would reach its output)."""
    from typer.testing import CliRunner

    from corral.cli.app import app

    caplog.set_level(logging.WARNING, LOGGER)
    url = f"memory://docs-demo-{uuid.uuid4().hex}"
    result = CliRunner().invoke(app, ["demo", "--json", "--runs", "12", "--db", url])
    assert result.exit_code == 0, result.output
    store = corral.open_store(url)
    runs = store.list_runs(limit=1000)
    kinds = {e.kind for r in runs for e in store.events(r.id)}
    assert runs and "approval_requested" not in kinds and "warning" not in kinds
    assert lines(caplog, logging.WARNING) == []
