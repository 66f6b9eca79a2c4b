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

from corral.cli.check import check_command
from corral.policy.readiness import readiness
from corral.policy.schema import Policy, load_policy

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
    """The completed reference config meets all seven items and every tool's needs."""
    report = readiness(load_policy(COMPLETE))
    assert report.all_met and report.ready
    assert report.summary == "7/7 checklist items met"
    assert report.tools_summary == "4/4 tools have what they need"
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
    assert lines[-1] == "5/7 checklist items met, 3/3 tools have what they need"


def test_strict_exits_1_while_an_item_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    """--strict turns a missing item into exit 1."""
    assert check_command(REFERENCE, strict=True, tools=None, as_json=False) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "5/7 checklist items met, 3/3 tools have what they need"
    )


def test_strict_exits_0_when_everything_is_met(capsys: pytest.CaptureFixture[str]) -> None:
    """--strict on the complete config exits 0."""
    assert check_command(COMPLETE, strict=True, tools=None, as_json=False) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "7/7 checklist items met, 4/4 tools have what they need"
    )


def test_json_shape_is_stable(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints valid, problems, items (five keys each), tools and warnings."""
    assert check_command(REFERENCE, strict=True, tools=None, as_json=True) == 1
    body = json.loads(capsys.readouterr().out)
    assert list(body) == ["valid", "problems", "items", "tools", "warnings"]
    assert body["valid"] is True
    assert body["problems"] == []
    assert [item["key"] for item in body["items"]] == KEYS
    for item in body["items"]:
        assert list(item) == ["key", "title", "met", "why", "hint"]
        assert isinstance(item["met"], bool)
        assert all(isinstance(item[k], str) for k in ("key", "title", "why", "hint"))
    assert [i["key"] for i in body["items"] if not i["met"]] == ["budgets", "output_validation"]
    assert [t["name"] for t in body["tools"]] == ["search.read", "kb.read", "http.get"]
    for entry in body["tools"]:
        assert list(entry) == ["name", "kinds", "because", "needs", "missing", "why", "hints"]
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
    """`python -m corral.cli.check FILE --strict --json --tools m:o` from the tools' directory."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "corral.cli.check",
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
        [sys.executable, "-m", "corral.cli.check", str(COMPLETE), "--strict"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.splitlines()[-1] == "7/7 checklist items met, 4/4 tools have what they need"


# -- the decision aid, per tool -----------------------------------------------------------------


def needs_of(policy: dict[str, Any], tools: list[object] | None = None) -> dict[str, Any]:
    """The decision aid's verdict per tool, as --json prints it."""
    report = readiness(Policy.from_dict(policy), tools)
    return {entry.name: entry.to_dict() for entry in report.tools}


def one_tool(spec: dict[str, Any], **policy: Any) -> dict[str, Any]:
    """The verdict on `t.x`, allowed with `spec`, in a policy with the other sections given."""
    body = {"tools": {"allow": ["t.x"], "specs": {"t.x": spec}}, **policy}
    return needs_of(body)["t.x"]


BROWSER = {
    "effect": "read",
    "cost_usd": 0.70,
    "constraints": {"url": {"schemes": ["https"], "hosts": ["status.vendor.example"]}},
}


def test_a_write_needs_approvals_idempotency_and_audit() -> None:
    """A write (declared, or of unknown effect) needs the three; the defaults meet them."""
    declared = one_tool({"effect": "write"})
    assert declared["kinds"] == ["write"]
    assert declared["because"] == ["can write: effect write"]
    assert declared["needs"] == ["approvals", "idempotency", "audit"]
    assert declared["missing"] == []
    assert one_tool({})["because"] == ["can write: no effect declared"]


def test_a_closed_world_read_needs_nothing() -> None:
    """A read with no URL argument, not expensive, in a one-tenant policy needs nothing more."""
    verdict = one_tool({"effect": "read"})
    assert (verdict["kinds"], verdict["needs"], verdict["missing"]) == ([], [], [])


@pytest.mark.parametrize(
    ("policy", "hint"),
    [
        ({"writes": {"require_approval": False}}, "remove writes.require_approval: false"),
        ({"mode": {"approvals": "observe"}}, "set mode.approvals: enforce"),
    ],
)
def test_a_write_without_live_approvals_misses_them(policy: dict[str, Any], hint: str) -> None:
    """Approvals turned off, or only observed, leave the write's approvals need missing."""
    verdict = one_tool({"effect": "write"}, **policy)
    assert verdict["missing"] == ["approvals"]
    assert verdict["hints"]["approvals"].startswith(hint)


def test_a_write_opting_out_of_approval_misses_it() -> None:
    """A write's own require_approval: false is named in the hint."""
    verdict = one_tool({"effect": "write", "require_approval": False})
    assert verdict["hints"] == {
        "approvals": "remove tools.specs.t.x.require_approval: false (a write waits for a"
        " human approval of its exact arguments)"
    }


def test_a_write_asking_for_approval_meets_it_when_writes_do_not() -> None:
    """require_approval: true on the tool meets the need whatever writes.require_approval says."""
    verdict = one_tool(
        {"effect": "write", "require_approval": True}, writes={"require_approval": False}
    )
    assert verdict["missing"] == []


@pytest.mark.parametrize(
    ("spec", "because"),
    [
        ({"open_world": True}, "can browse: tools.specs.t.x.open_world: true"),
        ({"expensive": True}, "can browse: marked expensive"),
        (
            {"constraints": {"target": {"schemes": ["https"]}}},
            "can browse: argument target takes a URL or host",
        ),
        (
            {"args_schema": {"type": "object", "properties": {"pageUrl": {"type": "string"}}}},
            "can browse: argument pageUrl takes a URL or host",
        ),
        (
            {"args_schema": {"type": "object", "properties": {"to": {"format": "hostname"}}}},
            "can browse: argument to takes a URL or host",
        ),
        (
            {
                "args_schema": {
                    "type": "object",
                    "properties": {
                        "pages": {"type": "array", "items": {"format": "uri"}},
                        "host": {"type": "string"},
                    },
                }
            },
            "can browse: arguments pages, host take a URL or host",
        ),
    ],
)
def test_how_a_tool_is_recognised_as_open_world(spec: dict[str, Any], because: str) -> None:
    """open_world: true, expensive, or a URL/host argument (by name, format or constraint)."""
    verdict = one_tool({"effect": "read", **spec})
    assert verdict["kinds"] == ["open_world"]
    assert verdict["because"] == [because]


def test_open_world_false_overrides_what_is_inferred() -> None:
    """open_world: false says a tool with a URL argument stays in a closed world."""
    schema = {"type": "object", "properties": {"url": {"type": "string"}}}
    verdict = one_tool({"effect": "read", "args_schema": schema, "open_world": False})
    assert verdict["kinds"] == []


def test_a_cost_over_the_kill_switch_threshold_makes_a_tool_expensive() -> None:
    """A tool costing at least kill_switch.expensive_cost_usd is expensive, as at run time."""
    verdict = one_tool({"effect": "read", "cost_usd": 0.5}, kill_switch={"expensive_cost_usd": 0.5})
    assert verdict["because"] == ["can browse: marked expensive"]


def test_open_world_must_be_a_boolean() -> None:
    """open_world is strict: a quoted "yes" is an error with its path."""
    from corral.exceptions import PolicyError

    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"tools": {"specs": {"t.x": {"open_world": "yes"}}}})
    assert caught.value.problems == ["tools.specs.t.x.open_world: must be true or false, got 'yes'"]


def test_a_browsing_tool_with_nothing_set_misses_budgets_degrade_and_constraints() -> None:
    """The field guide's browser, as prototypes have it: uncapped, default degrade, any host."""
    spec = {"effect": "read", "args_schema": {"type": "object", "properties": {"url": {}}}}
    verdict = one_tool(spec)
    assert verdict["needs"] == ["budgets", "dedupe", "degrade", "argument_constraints"]
    assert verdict["missing"] == ["budgets", "degrade", "argument_constraints"]
    assert verdict["hints"] == {
        "budgets": "cap it: tools.specs.t.x.max_calls (per run), or a cost_usd with"
        " budgets.max_usd, or limits: [{per: tool, tool: t.x, window: 1d, max_calls: ...}]",
        "degrade": "add a degrade: section to choose how a failing dependency is degraded,"
        " e.g. degrade: {on_degraded: tell_model} (the defaults apply until then)",
        "argument_constraints": "add tools.specs.t.x.constraints.url: {hosts: [example.com]}",
    }


@pytest.mark.parametrize(
    ("spec", "policy", "met"),
    [
        ({"max_calls": 3}, {}, True),
        ({}, {"budgets": {"max_usd": 2}}, True),
        ({"cost_usd": 0}, {"budgets": {"max_usd": 2}}, False),
        ({}, {}, False),
        (
            {"cost_usd": 0},
            {"limits": [{"per": "tool", "tool": "t.x", "window": "1d", "max_calls": 9}]},
            True,
        ),
        (
            {"cost_usd": 0},
            {"limits": [{"per": "tool", "tool": "t.y", "window": "1d", "max_calls": 9}]},
            False,
        ),
        ({}, {"limits": [{"per": "global", "window": "1d", "max_usd": 50}]}, True),
        ({"cost_usd": 0}, {"limits": [{"per": "agent", "window": "1d", "max_usd": 50}]}, False),
    ],
)
def test_what_caps_a_browsing_tool(spec: dict[str, Any], policy: dict[str, Any], met: bool) -> None:
    """Budgets are met by a per-run max_calls, a cost under a USD cap, or a window limit on it."""
    verdict = one_tool({**BROWSER, **spec}, degrade={}, **policy)
    assert ("budgets" in verdict["missing"]) is not met
    assert verdict["missing"] in ([], ["budgets"])


def test_budgets_that_are_only_observed_do_not_cap() -> None:
    """A cap in an observed guard is named, and the hint asks to enforce it."""
    verdict = one_tool({**BROWSER, "max_calls": 3}, degrade={}, mode={"budgets": "observe"})
    assert verdict["missing"] == ["budgets"]
    assert verdict["hints"]["budgets"] == "set mode.budgets: enforce (its caps are only observed)"
    assert verdict["why"]["budgets"].endswith("(max_calls 3 per run)")


def test_what_meets_a_browsing_tools_budget_is_named() -> None:
    """The why of a met budget names the caps in force."""
    verdict = one_tool({**BROWSER, "max_calls": 4}, degrade={}, budgets={"max_usd": 5})
    assert verdict["why"]["budgets"].endswith(
        "(max_calls 4 per run; $0.7 a call under budgets.max_usd)"
    )


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ({"cache": False}, "remove tools.specs.t.x.cache: false"),
        ({"cache_ttl_seconds": 0}, "give tools.specs.t.x.cache_ttl_seconds a value above 0"),
    ],
)
def test_a_browsing_read_without_the_read_cache_misses_dedupe(
    spec: dict[str, Any], hint: str
) -> None:
    """Turning the read cache off, or to zero seconds, leaves dedupe missing."""
    verdict = one_tool({**BROWSER, **spec}, degrade={}, budgets={"max_usd": 5})
    assert verdict["missing"] == ["dedupe"]
    assert verdict["hints"]["dedupe"].startswith(hint)


def test_a_browsing_write_is_deduplicated_by_its_key() -> None:
    """An open-world write needs both sets; its dedupe is idempotency, always on."""
    verdict = one_tool(
        {**BROWSER, "effect": "write", "cache": False}, degrade={}, budgets={"max_usd": 5}
    )
    assert verdict["kinds"] == ["write", "open_world"]
    assert verdict["needs"] == [
        "approvals",
        "idempotency",
        "audit",
        "budgets",
        "dedupe",
        "degrade",
        "argument_constraints",
    ]
    assert verdict["missing"] == []
    assert "idempotency key" in verdict["why"]["dedupe"]


def test_a_degrade_section_meets_degrade() -> None:
    """Any degrade: section (even empty: the defaults, chosen) meets it; the why shows them."""
    assert "degrade" in one_tool(BROWSER, budgets={"max_usd": 5})["missing"]
    verdict = one_tool(BROWSER, budgets={"max_usd": 5}, degrade={"on_degraded": "stop"})
    assert verdict["missing"] == []
    assert verdict["why"]["degrade"] == (
        "a failing dependency is degraded (0.5 of at least 5 calls failed in 60 s; then stop for"
        " 30 s) instead of retried"
    )


@pytest.mark.parametrize(
    ("constraint", "met"),
    [
        ({"schemes": ["https"]}, False),
        ({"hosts": ["*.vendor.example"]}, True),
        ({"enum": ["https://a.example/"]}, True),
        ({"pattern": "https://a[.]example/.*"}, True),
        ({"max_length": 200}, False),
    ],
)
def test_url_arguments_need_a_constraint_that_bounds_the_host(
    constraint: dict[str, Any], met: bool
) -> None:
    """hosts, enum or pattern bound where a URL goes; schemes or a length alone do not."""
    spec = {
        "effect": "read",
        "cost_usd": 0.7,
        "args_schema": {"type": "object", "properties": {"url": {}}},
        "constraints": {"url": constraint},
    }
    verdict = one_tool(spec, degrade={}, budgets={"max_usd": 5})
    assert verdict["missing"] == ([] if met else ["argument_constraints"])


def test_observed_constraints_miss_argument_constraints() -> None:
    """Constraints in an observed arguments guard only log: the need is missing."""
    verdict = one_tool(BROWSER, degrade={}, budgets={"max_usd": 5}, mode={"arguments": "observe"})
    assert verdict["hints"] == {
        "argument_constraints": "set mode.arguments: enforce (calls outside the constraints run)"
    }


def test_a_per_tenant_limit_makes_every_tool_need_scoped_credentials() -> None:
    """limits per tenant: each tool declares its credentials, or says it needs none."""
    specs = {
        "crm.read": {"effect": "read", "credentials": ["crm_token"]},
        "kb.read": {"effect": "read", "credentials": []},
        "calc.run": {"effect": "read"},
    }
    verdict = needs_of(
        {
            "tools": {"allow": list(specs), "specs": specs},
            "limits": [{"per": "tenant", "window": "1d", "max_usd": 50}],
        }
    )
    assert {name: v["missing"] for name, v in verdict.items()} == {
        "crm.read": [],
        "kb.read": [],
        "calc.run": ["scoped_credentials"],
    }
    assert verdict["calc.run"]["because"] == ["multi-tenant: limits per tenant (1d)"]
    assert verdict["crm.read"]["why"]["scoped_credentials"].startswith("crm_token resolved per")


def test_a_tool_declaring_credentials_makes_the_policy_multi_tenant() -> None:
    """One tool with credentials (in the policy) puts scoped credentials on every tool."""
    specs = {
        "crm.read": {"effect": "read", "credentials": ["crm_token"]},
        "calc.run": {"effect": "read"},
    }
    verdict = needs_of({"tools": {"allow": list(specs), "specs": specs}})
    assert verdict["calc.run"]["because"] == ["multi-tenant: crm.read declares credentials"]
    assert verdict["calc.run"]["missing"] == ["scoped_credentials"]


def test_a_single_tenant_policy_needs_no_credentials() -> None:
    """Without tenant limits or credentials, scoped credentials are not asked for."""
    assert "scoped_credentials" not in one_tool({"effect": "write"})["needs"]


def test_registered_code_adds_arguments_costs_and_credentials() -> None:
    """With --tools, the code's argument schema, cost and credentials count."""
    from corral.tools import ToolContext
    from corral.tools import tool as corral_tool

    @corral_tool(name="browser.open", effect="read", cost_usd=0.7, credentials=("browser_key",))
    def browse(url: str, ctx: ToolContext) -> str:
        return url

    policy = {"tools": {"allow": ["browser.open"]}, "budgets": {"max_usd": 3}, "degrade": {}}
    assert needs_of(policy)["browser.open"]["kinds"] == ["write"]
    verdict = needs_of(policy, [browse])["browser.open"]
    assert verdict["kinds"] == ["open_world", "multi_tenant"]
    assert verdict["because"] == [
        "can browse: argument url takes a URL or host",
        "multi-tenant: browser.open declares credentials",
    ]
    assert verdict["missing"] == ["argument_constraints"]


def test_an_mcp_tool_definition_is_read_too() -> None:
    """A tool shaped like MCP's (inputSchema, annotations.openWorldHint) is judged by them."""
    mcp_tool = SimpleNamespace(
        name="fetch",
        inputSchema={"type": "object", "properties": {"query": {"type": "string"}}},
        annotations=SimpleNamespace(openWorldHint=True),
    )
    policy = {"tools": {"allow": ["fetch"], "specs": {"fetch": {"effect": "read"}}}}
    verdict = needs_of(policy, [mcp_tool])["fetch"]
    assert verdict["because"] == ["can browse: the tool's openWorldHint is true"]
    assert "argument_constraints" not in verdict["needs"]


def test_strict_fails_on_a_tools_missing_need_with_every_item_met(tmp_path: Path) -> None:
    """The complete config without its degrade section: 7/7 items, yet --strict exits 1."""
    from typer.testing import CliRunner

    from corral.cli.app import app

    text = COMPLETE.read_text().replace("degrade:\n  on_degraded: tell_model\n", "")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["check", str(path), "--strict"])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert "Per tool (the field guide's decision aid)" in lines
    assert "  ✗ http.get: can browse: argument url takes a URL or host" in lines
    assert "      has budgets, dedupe, argument_constraints" in lines
    assert any(line.startswith("      missing degrade: add a degrade: section") for line in lines)
    assert "  ✓ ticket.create: can write: effect write" in lines
    assert "  ✓ search.read: reads, in a closed world; nothing more needed" in lines
    assert lines[-1] == "7/7 checklist items met, 3/4 tools have what they need"
    json_run = CliRunner().invoke(app, ["check", str(path), "--strict", "--json"])
    assert json_run.exit_code == 1
    tools = {t["name"]: t for t in json.loads(json_run.stdout)["tools"]}
    assert tools["http.get"]["missing"] == ["degrade"]
    assert all(item["met"] for item in json.loads(json_run.stdout)["items"])


def test_without_tools_the_report_says_it_read_the_policy_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The per-tool section notes that --tools would add what the code declares."""
    check_command(COMPLETE, strict=False, tools=None, as_json=False)
    assert any(
        "judged from the policy alone" in line for line in capsys.readouterr().out.splitlines()
    )


def test_the_policy_reference_shows_real_check_output(tmp_path: Path) -> None:
    """docs/policy.md's per-tool example is what `corral check` prints for that policy."""
    from typer.testing import CliRunner

    from corral.cli.app import app

    doc = (Path(__file__).parents[1] / "docs" / "policy.md").read_text()
    section = doc.split("## `corral check`", 1)[1]
    shown = section.split("```text\n", 1)[1].split("```", 1)[0].strip("\n")
    text = COMPLETE.read_text().replace("degrade:\n  on_degraded: tell_model\n", "")
    text = text.replace('"search.read", "kb.read", ', '"search.read", ')
    text = text.replace(
        "    kb.read:\n      effect: read\n      output_schema: {type: object}\n", ""
    )
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    out = CliRunner().invoke(app, ["check", str(path)]).stdout
    assert shown in out


def test_window_limits_that_are_only_observed_do_not_cap() -> None:
    """A per-tool window limit under mode.limits: observe asks to enforce that guard."""
    limit = {"per": "tool", "tool": "t.x", "window": "1d", "max_calls": 200}
    verdict = one_tool(
        {**BROWSER, "cost_usd": 0}, degrade={}, limits=[limit], mode={"limits": "observe"}
    )
    assert verdict["hints"] == {"budgets": "set mode.limits: enforce (its caps are only observed)"}
