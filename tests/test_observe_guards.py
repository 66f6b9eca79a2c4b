"""Observe mode per guard: the guards a policy names record what they would stop, the rest
enforce; approvals are observed only when named."""

from __future__ import annotations

from typing import Any

import pytest

import corral
from corral.testing import MemoryStore


def policy(mode: Any, **sections: Any) -> corral.Policy:
    base: dict[str, Any] = {
        "mode": mode,
        "tools": {"allow": ["kb.read", "crm.write"]},
        "budgets": {"max_tool_calls": 1},
        "writes": {"require_approval": False},
    }
    base.update(sections)
    return corral.Policy.from_dict(base)


@corral.tool(name="kb.read", effect="read")
def kb_read(query: str) -> str:
    return f"answer {query}"


@corral.tool(name="browser.open", effect="read")
def browser_open(url: str) -> str:
    return "page"


SENT: list[str] = []


@corral.tool(name="crm.write", effect="write")
def crm_write(note: str) -> str:
    SENT.append(note)
    return "written"


def run_calls(pol: corral.Policy, calls: list[tuple[str, dict[str, Any]]], **run: Any) -> Any:
    with corral.Run(
        pol, tools=[kb_read, browser_open, crm_write], store=MemoryStore(), **run
    ) as governed:
        for name, args in calls:
            governed.call(name, args)
        governed.finish("done")
    return governed.result


def test_observed_budgets_are_watched_while_the_allowlist_is_enforced() -> None:
    """``mode: {budgets: observe}``: a call past max_tool_calls goes ahead (recorded), but a
    tool off the allowlist still stops the run."""
    pol = policy({"budgets": "observe"})
    watched = run_calls(pol, [("kb.read", {"query": "a"}), ("kb.read", {"query": "b"})])
    assert watched.stop_reason == "ok" and watched.usage.tool_calls == 2
    assert [w.reason for w in watched.would_stop] == ["max_tool_calls"]
    denied = run_calls(pol, [("browser.open", {"url": "https://x.example/"})])
    assert str(denied.stop) == "tool_denied:browser.open" and denied.would_stop == ()


def test_an_enforced_guard_named_under_an_observe_default_still_stops() -> None:
    """``mode: {default: observe, allowlist: enforce}``: budgets watched, allowlist enforced."""
    pol = policy({"default": "observe", "allowlist": "enforce"})
    watched = run_calls(pol, [("kb.read", {"query": "a"}), ("kb.read", {"query": "b"})])
    assert watched.stop_reason == "ok" and watched.usage.tool_calls == 2
    denied = run_calls(pol, [("browser.open", {"url": "https://x.example/"})])
    assert denied.stop_reason == "tool_denied"


def test_whole_observe_mode_watches_the_allowlist() -> None:
    """``mode: observe``: the tool off the allowlist runs and is listed as a would-be denial."""
    result = run_calls(policy("observe"), [("browser.open", {"url": "https://x.example/"})])
    assert result.stop_reason == "ok"
    assert [str(w) for w in result.would_stop] == ["tool_denied:browser.open"]


def test_observe_mode_never_lets_a_write_skip_its_approval_unless_named() -> None:
    """Approvals stay enforced under ``mode: observe`` (no channel: refused at start); only
    ``approvals: observe`` lets an unapproved write run, recorded as a would-be denial."""
    writes = {"require_approval": True}
    with pytest.raises(corral.ConfigError, match="approval"):
        corral.Run(policy("observe", writes=writes), tools=[crm_write], store=MemoryStore())
    SENT.clear()
    pol = policy({"default": "observe", "approvals": "observe"}, writes=writes)
    result = run_calls(pol, [("crm.write", {"note": "hello"})])
    assert result.stop_reason == "ok" and SENT == ["hello"]
    assert [w.reason for w in result.would_stop] == ["approval_denied"]


def test_observed_approvals_do_not_observe_anything_else() -> None:
    """``mode: {approvals: observe}`` alone: the write runs unapproved, budgets still enforce."""
    SENT.clear()
    pol = policy({"approvals": "observe"}, writes={"require_approval": True})
    result = run_calls(pol, [("crm.write", {"note": "a"}), ("kb.read", {"query": "b"})])
    assert SENT == ["a"] and result.stop_reason == "max_tool_calls"


def test_the_mode_is_recorded_as_mixed_when_some_guards_are_observed() -> None:
    """The run's start event says ``mixed`` and lists the observed guards."""
    store = MemoryStore()
    with corral.Run(policy({"loops": "observe"}), tools=[kb_read], store=store) as run:
        run.finish("done")
    [start] = [e for e in store.events(run.result.run_id) if e.kind == "run_start"]
    assert start.data["mode"] == "mixed" and start.data["observed"] == ["loops"]


@pytest.mark.parametrize(
    ("mode", "line"),
    [
        (
            "Observe",
            "mode: must be one of 'enforce' or 'observe', got 'Observe' (did you mean 'observe'?)",
        ),
        ({"budget": "observe"}, "mode.budget: unknown key"),
        ({"budgets": "watch"}, "mode.budgets: must be one of 'enforce' or 'observe', got 'watch'"),
    ],
)
def test_a_bad_mode_gets_one_clear_line(mode: Any, line: str) -> None:
    """A mistyped mode or guard name is one message with its path, not one per union branch."""
    with pytest.raises(corral.PolicyError) as caught:
        corral.Policy.from_dict({"mode": mode})
    assert str(caught.value).splitlines()[1:] == [f"  {line}"]


def test_corral_check_warns_about_observed_guards_and_unapproved_writes(tmp_path: Any) -> None:
    """``corral check`` names the observed guards and warns that writes run unapproved."""
    from typer.testing import CliRunner

    from corral.cli.app import app

    path = tmp_path / "corral.yaml"
    path.write_text("mode: {budgets: observe, approvals: observe}\ntools: {allow: [kb.read]}\n")
    shown = CliRunner().invoke(app, ["check", str(path)])
    assert "mode: mixed (approvals, budgets)" in shown.output
    assert "run without one" in shown.output
