"""The production readiness report and `corral check` on valid configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from corral._check_cli import check_command
from corral.checklist import readiness
from corral.policy import Policy, load_policy

CONFIGS = Path(__file__).parent / "configs"
FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = CONFIGS / "reference.yaml"
COMPLETE = CONFIGS / "complete.yaml"
KEYS = [
    "allowlist",
    "budgets",
    "output_validation",
    "stop_reasons",
    "monitoring",
    "kill_switch",
    "write_approvals",
]


def unmet(policy: Policy, tools: list[object] | None = None) -> set[str]:
    return {item.key for item in readiness(policy, tools).items if not item.met}


def tool(name: str, effect: str | None, **more: Any) -> object:
    return SimpleNamespace(name=name, effect=effect, **more)


@pytest.fixture
def in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)


# -- the report ---------------------------------------------------------------------------------


def test_items_come_in_the_field_guides_order() -> None:
    """Seven items, in checklist order, each saying why it matters."""
    report = readiness(Policy.from_dict({}))
    assert [item.key for item in report.items] == KEYS
    assert all(item.title and item.why for item in report.items)


def test_reference_misses_usd_budget_and_output_validation() -> None:
    """The reference config meets every item except a USD cap and output schemas."""
    report = readiness(load_policy(REFERENCE))
    assert {item.key for item in report.missing} == {"budgets", "output_validation"}
    assert report.summary == "5/7 checklist items met"
    assert not report.all_met
    assert report.warnings == []


def test_unmet_items_say_what_to_add() -> None:
    """Each missing item has a hint naming the config key to add."""
    items = {item.key: item for item in readiness(load_policy(REFERENCE)).items}
    assert items["budgets"].hint == "add budgets.max_usd, e.g. max_usd: 1.00"
    assert items["output_validation"].hint == (
        "add tools.specs.<name>.output_schema (JSON Schema) for: search.read, kb.read, http.get"
    )
    assert all(item.hint == "" for item in items.values() if item.met)


def test_budget_item_says_the_other_budgets_always_apply() -> None:
    """The budgets item shows the step, time and call limits in force, defaults included."""
    item = readiness(Policy.from_dict({"budgets": {"max_steps": 12}})).items[1]
    assert "(here 12, 90 s, 15)" in item.why


def test_complete_config_meets_every_item() -> None:
    """The completed reference config meets all seven items, without warnings."""
    report = readiness(load_policy(COMPLETE))
    assert report.all_met
    assert report.summary == "7/7 checklist items met"
    assert report.warnings == []


def test_empty_policy_report() -> None:
    """An empty policy is bounded and asks for approvals, and misses the rest."""
    assert unmet(Policy.from_dict({})) == {
        "allowlist",
        "budgets",
        "output_validation",
        "monitoring",
        "kill_switch",
    }


def test_stop_reasons_are_always_met() -> None:
    """corral always returns stop reasons, and the item says so."""
    item = readiness(Policy.from_dict({})).items[3]
    assert item.met
    assert item.why.startswith("always on")


def test_observe_mode_is_a_warning_and_misses_the_allowlist() -> None:
    """In observe mode nothing is denied: the allowlist item is unmet and a warning says why."""
    policy = load_policy(COMPLETE).model_copy(update={"mode": "observe"})
    report = readiness(policy)
    assert {item.key for item in report.missing} == {"allowlist"}
    assert report.items[0].hint.startswith("set mode: enforce")
    assert any(w.startswith("mode: observe:") for w in report.warnings)


def test_kill_switch_needs_an_explicit_mode() -> None:
    """The default mode does not count: the policy must choose one."""
    assert "kill_switch" in unmet(Policy.from_dict({}))
    assert "kill_switch" in unmet(Policy.from_dict({"kill_switch": {}}))
    chosen = {"kill_switch": {"mode_when_enabled": "stop_all"}}
    assert "kill_switch" not in unmet(Policy.from_dict(chosen))


def test_monitoring_hint_lists_what_is_not_tracked() -> None:
    """Tracking only some drift signals leaves the item unmet, naming the rest."""
    policy = Policy.from_dict({"monitoring": {"track": ["tool_calls_per_run", "stop_reason"]}})
    item = readiness(policy).items[4]
    assert not item.met
    assert item.hint == "add to monitoring.track: tokens_per_request, latency_p95"


def test_turning_approvals_off_misses_the_write_item() -> None:
    """writes.require_approval: false leaves approvals for writes unmet."""
    policy = Policy.from_dict({"writes": {"require_approval": False}})
    item = readiness(policy).items[6]
    assert not item.met
    assert item.hint == "set writes.require_approval: true"


def test_write_tool_opting_out_of_approval_misses_the_write_item() -> None:
    """An allowed write (or unknown effect) with require_approval: false is flagged."""
    specs = {
        "refund.send": {"effect": "write", "require_approval": False},
        "mystery": {"require_approval": False},
        "kb.read": {"effect": "read", "require_approval": False},
    }
    policy = Policy.from_dict({"tools": {"allow": list(specs), "specs": specs}})
    item = readiness(policy).items[6]
    assert not item.met
    assert item.hint == (
        "remove require_approval: false from tools.specs.refund.send, tools.specs.mystery"
        " (writes need approval)"
    )


def test_read_tool_opting_out_of_approval_is_fine() -> None:
    """A read tool without approval does not affect the write item."""
    specs = {"kb.read": {"effect": "read", "require_approval": False}}
    policy = Policy.from_dict({"tools": {"allow": ["kb.read"], "specs": specs}})
    assert "write_approvals" not in unmet(policy)


def test_output_validation_counts_schemas_declared_in_code() -> None:
    """With registered tools, a tool's own output schema meets the item."""
    policy = load_policy(REFERENCE)
    tools = [
        tool("search.read", "read", output_schema={"type": "string"}),
        tool("kb.read", "read", output_schema={"type": "string"}),
        tool("http.get", "read", output_schema={"type": "string"}),
    ]
    assert "output_validation" in unmet(policy)
    assert "output_validation" not in unmet(policy, tools)


def test_disable_expensive_with_nothing_expensive_warns() -> None:
    """A kill switch that would disable expensive tools, when none is, is a warning."""
    policy = Policy.from_dict(
        {"tools": {"allow": ["kb.read"]}, "kill_switch": {"mode_when_enabled": "disable_expensive"}}
    )
    assert readiness(policy).warnings == [
        "kill_switch.mode_when_enabled: disable_expensive blocks nothing here: no allowed tool"
        " is marked expensive and kill_switch.expensive_cost_usd is not set"
    ]
    assert readiness(policy, [tool("kb.read", "read", expensive=True)]).warnings == []


def test_policy_warnings_are_included() -> None:
    """The policy's own warnings appear in the report."""
    policy = Policy.from_dict({"tools": {"specs": {"browser.open": {"effect": "read"}}}})
    assert readiness(policy).warnings == policy.warnings()


# -- registered tools ---------------------------------------------------------------------------


def test_registered_tools_warnings() -> None:
    """Allowed but not registered, registered but denied, and effects that disagree."""
    specs = {"kb.read": {"effect": "read"}}
    policy = Policy.from_dict(
        {"tools": {"allow": ["search.read", "kb.read", "http.get"], "specs": specs}}
    )
    tools = [
        tool("search.read", "read"),
        tool("kb.read", "write"),
        tool("http_get", "read"),
        tool("browser.open", "read"),
    ]
    assert readiness(policy, tools).warnings == [
        "tools.allow: 'http.get' is allowed but no registered tool has that name"
        " (did you mean 'http_get'?)",
        "tool 'browser.open': registered but not in tools.allow, so every call is denied",
        "tool 'http_get': registered but not in tools.allow, so every call is denied",
        "tool 'kb.read': tools.specs says effect read, the code says write;"
        " treated as write (the stricter effect wins)",
    ]


def test_effect_disagreement_makes_an_opt_out_a_write() -> None:
    """A tool the code declares a write needs approval even if its spec says read."""
    specs = {"kb.read": {"effect": "read", "require_approval": False}}
    policy = Policy.from_dict({"tools": {"allow": ["kb.read"], "specs": specs}})
    assert "write_approvals" not in unmet(policy)
    assert "write_approvals" in unmet(policy, [tool("kb.read", "write")])


def test_undeclared_effect_is_a_warning() -> None:
    """An allowed tool with no effect in code or policy is treated as a write, and said so."""
    policy = Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    undeclared = tool("kb.read", "write", effect_declared=False)
    assert readiness(policy, [undeclared]).warnings == [
        "tool 'kb.read': no effect declared in code or in tools.specs; treated as write"
    ]


def test_tools_built_with_the_decorator() -> None:
    """Tools made with @tool report their effect, declared or not, and their output schema."""
    from corral.tools import tool as corral_tool

    @corral_tool(name="search.read", effect="read", output_schema={"type": "string"})
    def search(query: str) -> str:
        return query

    @corral_tool(name="kb.read")
    def kb(query: str) -> str:
        return query

    policy = Policy.from_dict({"tools": {"allow": ["search.read", "kb.read"]}})
    report = readiness(policy, [search, kb])
    assert report.items[2].hint == "add tools.specs.<name>.output_schema (JSON Schema) for: kb.read"
    assert report.warnings == [
        "tool 'kb.read': no effect declared in code or in tools.specs; treated as write"
    ]


def test_no_tools_given_means_no_tool_warnings() -> None:
    """Without registered tools the report does not guess what the code holds."""
    assert readiness(load_policy(REFERENCE), None).warnings == []
    assert len(readiness(load_policy(REFERENCE), []).warnings) == 3


# -- the command --------------------------------------------------------------------------------


def test_check_reference_prints_the_checklist(capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file prints each item with a mark, hints for misses, and a summary line."""
    assert check_command(REFERENCE, strict=False, tools=None, as_json=False) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"✓ {REFERENCE}: valid policy"
    assert "  ✓ Tool gateway with a default-deny allowlist" in lines
    assert "  ✗ Budgets: steps, seconds, tool calls and USD" in lines
    assert "      fix: add budgets.max_usd, e.g. max_usd: 1.00" in lines
    assert lines[-1] == "5/7 checklist items met"


def test_strict_exits_1_while_an_item_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    """--strict turns a missing item into exit 1."""
    assert check_command(REFERENCE, strict=True, tools=None, as_json=False) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "5/7 checklist items met"


def test_strict_exits_0_when_everything_is_met(capsys: pytest.CaptureFixture[str]) -> None:
    """--strict on the complete config exits 0."""
    assert check_command(COMPLETE, strict=True, tools=None, as_json=False) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "7/7 checklist items met"


def test_json_shape_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints valid, problems, items (five keys each) and warnings."""
    assert check_command(REFERENCE, strict=True, tools=None, as_json=True) == 1
    body = json.loads(capsys.readouterr().out)
    assert list(body) == ["valid", "problems", "items", "warnings"]
    assert body["valid"] is True
    assert body["problems"] == []
    assert [item["key"] for item in body["items"]] == KEYS
    for item in body["items"]:
        assert list(item) == ["key", "title", "met", "why", "hint"]
        assert isinstance(item["met"], bool)
        assert all(isinstance(item[k], str) for k in ("key", "title", "why", "hint"))
    assert [i["key"] for i in body["items"] if not i["met"]] == ["budgets", "output_validation"]
    assert body["warnings"] == []


@pytest.mark.usefixtures("in_fixtures")
def test_tools_option_adds_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    """--tools module:object imports from the current directory and compares with the policy."""
    assert check_command(REFERENCE, strict=False, tools="check_tools:TOOLS", as_json=True) == 0
    body = json.loads(capsys.readouterr().out)  # what the module prints goes to stderr
    assert body["warnings"] == [
        "tools.allow: 'http.get' is allowed but no registered tool has that name"
        " (did you mean 'http_get'?)",
        "tool 'browser.open': registered but not in tools.allow, so every call is denied",
        "tool 'http_get': registered but not in tools.allow, so every call is denied",
    ]


@pytest.mark.usefixtures("in_fixtures")
@pytest.mark.parametrize("attr", ["MATCHING", "BY_NAME", "SINGLE", "FUNCTIONS"])
def test_tools_option_accepts_lists_dicts_single_tools_and_functions(
    attr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list or tuple, a dict of name to tool, one tool, or plain functions all load."""
    assert check_command(REFERENCE, strict=False, tools=f"check_tools:{attr}", as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


@pytest.mark.usefixtures("in_fixtures")
@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            "check_tools",
            "--tools: expected module:object (e.g. myagent.tools:TOOLS), got 'check_tools'",
        ),
        (
            "check_tools:",
            "--tools: expected module:object (e.g. myagent.tools:TOOLS), got 'check_tools:'",
        ),
        (
            "check_tools:TOOL",
            "--tools: 'check_tools' has no attribute 'TOOL' (did you mean 'TOOLS'?)",
        ),
        (
            "check_tools:NOT_TOOLS",
            "--tools: 'check_tools:NOT_TOOLS' is not a tool, a list of"
            " tools or a dict of tools, got int",
        ),
        (
            "check_tools:BAD_ITEMS",
            "--tools: item 1 of 'check_tools:BAD_ITEMS' is not a tool, got str",
        ),
        (
            "no_such_module_here:TOOLS",
            "--tools: no module named 'no_such_module_here'"
            f" (looked in {FIXTURES} and on sys.path)",
        ),
        (
            "check_tools_broken:TOOLS",
            "--tools: importing 'check_tools_broken' failed: RuntimeError: cannot reach the vault",
        ),
    ],
)
def test_bad_tools_option_is_a_clear_error(
    spec: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --tools value that does not name tools is one problem line and exit 2."""
    assert check_command(REFERENCE, strict=False, tools=spec, as_json=False) == 2
    out, err = capsys.readouterr()
    assert problem in out.splitlines()
    assert out.splitlines()[0] == f"✗ {REFERENCE}: tools not loaded (1 problem)"
    assert "Traceback" not in out + err


def test_module_entry_point_strict_json_with_tools() -> None:
    """`python -m corral._check_cli FILE --strict --json --tools m:o` from the tools' directory."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral._check_cli",
            str(REFERENCE),
            "--strict",
            "--json",
            "--tools",
            "check_tools:TOOLS",
        ],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=FIXTURES,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    body = json.loads(proc.stdout)
    assert body["valid"] is True
    assert len(body["warnings"]) == 3
    assert proc.stderr == "check_tools imported\n"


def test_module_entry_point_complete_config_exits_0() -> None:
    """The complete config passes --strict through the module entry point."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "corral._check_cli", str(COMPLETE), "--strict"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "7/7 checklist items met"
