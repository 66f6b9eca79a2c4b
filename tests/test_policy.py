"""The policy model: the reference config, defaults, exact names, digest, strictness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from corral.exceptions import PolicyError
from corral.policy.schema import Policy, load_policy

CONFIGS = Path(__file__).parent / "configs"
REFERENCE = CONFIGS / "reference.yaml"
REFERENCE_JSON = CONFIGS / "reference.json"

# The field guide's "safe default config", byte for byte as the product contract shows it.
REFERENCE_TEXT = """\
tools:
  allow: ["search.read", "kb.read", "http.get"]
budgets:
  max_steps: 30
  max_seconds: 90
  max_tool_calls: 15
writes:
  require_approval: true
monitoring:
  track: ["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"]
kill_switch:
  mode_when_enabled: "disable_writes"
"""


def test_reference_file_is_the_contract_text() -> None:
    """tests/configs/reference.yaml is the reference configuration, unchanged."""
    assert REFERENCE.read_text(encoding="utf-8") == REFERENCE_TEXT


def test_reference_yaml_means_exactly_what_it_says() -> None:
    """The reference config loads unchanged and each line means what it reads."""
    policy = load_policy(REFERENCE)
    assert policy.tools.allow == ["search.read", "kb.read", "http.get"]
    assert (
        policy.budgets.max_steps,
        policy.budgets.max_seconds,
        policy.budgets.max_tool_calls,
    ) == (
        30,
        90.0,
        15,
    )
    assert policy.writes.require_approval is True
    assert policy.monitoring.track == [
        "tool_calls_per_run",
        "tokens_per_request",
        "stop_reason",
        "latency_p95",
    ]
    assert policy.kill_switch.mode_when_enabled == "disable_writes"
    assert policy.mode == "enforce"


def test_reference_sets_nothing_it_does_not_name() -> None:
    """No USD or token budget, no tool specs: the reference names none."""
    policy = load_policy(REFERENCE)
    assert policy.budgets.max_usd is None
    assert policy.budgets.max_tokens is None
    assert policy.tools.specs == {}
    assert policy.model_fields_set == {"tools", "budgets", "writes", "monitoring", "kill_switch"}


def test_reference_json_means_the_same_as_the_yaml() -> None:
    """The same config written as JSON gives an equal policy with the same digest."""
    from_yaml = load_policy(REFERENCE)
    from_json = load_policy(REFERENCE_JSON)
    assert from_json == from_yaml
    assert from_json.digest == from_yaml.digest


def test_reference_allows_exactly_its_three_tools() -> None:
    """Each listed tool is allowed; the incident's browser tool is not."""
    policy = load_policy(REFERENCE)
    assert all(policy.allows(name) for name in ("search.read", "kb.read", "http.get"))
    assert not policy.allows("browser.open")


def test_missing_budgets_section_gets_the_defaults() -> None:
    """With no budgets section a run is still bounded: 30 steps, 90 s, 15 tool calls."""
    budgets = Policy.from_dict({"tools": {"allow": ["kb.read"]}}).budgets
    assert (budgets.max_steps, budgets.max_seconds, budgets.max_tool_calls) == (30, 90.0, 15)
    assert budgets.max_usd is None


def test_partial_budgets_keep_the_other_defaults() -> None:
    """Naming one budget leaves the others at their defaults."""
    budgets = Policy.from_dict({"budgets": {"max_steps": 5}}).budgets
    assert (budgets.max_steps, budgets.max_seconds, budgets.max_tool_calls) == (5, 90.0, 15)


def test_empty_policy_allows_nothing() -> None:
    """An explicit empty mapping is a valid policy that allows no tool at all."""
    policy = Policy.from_dict({})
    assert policy.tools.allow == []
    assert not any(policy.allows(n) for n in ("search.read", "kb.read", "", "*"))


def test_empty_mapping_file_is_the_empty_policy(tmp_path: Path) -> None:
    """A file holding `{}` loads as the empty policy; an empty file does not."""
    file = tmp_path / "policy.yaml"
    file.write_text("{}\n", encoding="utf-8")
    assert load_policy(file) == Policy.from_dict({})
    file.write_text("", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(file)
    assert caught.value.problems == ["(file): is empty (write {} for a policy that allows nothing)"]


def test_missing_writes_section_still_requires_approval() -> None:
    """Approvals for writes are on unless a policy turns them off."""
    assert Policy.from_dict({}).writes.require_approval is True


@pytest.mark.parametrize(
    "name",
    [
        "Search.read",
        "SEARCH.READ",
        "search.read ",
        " search.read",
        "search.read\n",
        "search_read",
        "search",
        "search.read.all",
        "search.*",
        "*",
        "",
        "s\u0435arch.read",  # CYRILLIC SMALL LETTER IE for the first "e"
        "search\u200b.read",  # zero-width space
    ],
)
def test_allowlist_matches_exact_names_only(name: str) -> None:
    """No case folding, trimming, wildcards, prefixes or look-alikes."""
    policy = Policy.from_dict({"tools": {"allow": ["search.read"]}})
    assert policy.allows("search.read")
    assert not policy.allows(name)


tool_names = st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True)


@given(allowed=st.lists(tool_names, unique=True, max_size=6), probe=st.text(max_size=14))
def test_allows_is_exact_membership(allowed: list[str], probe: str) -> None:
    """For any allowlist and any name, a name is allowed exactly when it is listed."""
    policy = Policy.from_dict({"tools": {"allow": allowed}})
    assert policy.allows(probe) == (probe in allowed)
    assert all(policy.allows(name) for name in allowed)


def test_digest_ignores_key_order_and_spelled_out_defaults() -> None:
    """The digest follows the policy's meaning, not how the file is laid out."""
    a = Policy.from_dict({"budgets": {"max_steps": 30, "max_usd": 1.50}, "tools": {"allow": ["a"]}})
    b = Policy.from_dict({"tools": {"allow": ["a"]}, "budgets": {"max_usd": 1.5}})
    assert a.digest == b.digest
    assert len(a.digest) == 16
    assert int(a.digest, 16) >= 0


def test_digest_changes_when_the_meaning_changes() -> None:
    """Another budget, another tool or another mode gives another digest."""
    base = {"tools": {"allow": ["a"]}, "budgets": {"max_steps": 30}}
    digests = {
        Policy.from_dict(base).digest,
        Policy.from_dict({**base, "budgets": {"max_steps": 31}}).digest,
        Policy.from_dict({**base, "tools": {"allow": ["a", "b"]}}).digest,
        Policy.from_dict({**base, "mode": "observe"}).digest,
    }
    assert len(digests) == 4


def test_digest_is_stable_across_processes() -> None:
    """Two interpreters with different hash seeds compute the same digest."""
    code = f"from corral.policy import load_policy; print(load_policy({str(REFERENCE)!r}).digest)"
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        seen.add(out.stdout.strip())
    assert seen == {load_policy(REFERENCE).digest}


def test_unknown_key_is_an_error_not_ignored() -> None:
    """A key the schema does not know is rejected with its path."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"budgets": {"max_steps": 3, "max_stpes": 5}})
    assert caught.value.problems == ["budgets.max_stpes: unknown key (did you mean 'max_steps'?)"]


@pytest.mark.parametrize("value", [True, "10", 10.0, None])
def test_step_budget_takes_only_a_true_integer(value: object) -> None:
    """Booleans, strings, floats and null are never read as a step count."""
    with pytest.raises(PolicyError):
        Policy.from_dict({"budgets": {"max_steps": value}})


def test_every_problem_is_reported_at_once() -> None:
    """A dict with three problems raises one error listing all three, in document order."""
    with pytest.raises(PolicyError) as caught:
        Policy.from_dict({"mode": "watch", "budgets": {"max_steps": -3}, "extra": 1})
    assert caught.value.problems == [
        "mode: must be one of 'enforce' or 'observe', got 'watch'",
        "budgets.max_steps: must be a positive integer, got -3",
        "extra: unknown key (known: approvals, budgets, context, degrade, kill_switch, limits,"
        " loops, mode, models, monitoring, observations, recording, redact, tools, version,"
        " writes)",
    ]


def test_policy_error_names_the_source_and_count(tmp_path: Path) -> None:
    """The exception's text starts with the file and the number of problems."""
    file = tmp_path / "p.yaml"
    file.write_text("budgets: {max_steps: -3, max_tool_calls: 0}\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(file)
    assert str(caught.value).splitlines()[0] == f"{file}: invalid policy (2 problems)"
    assert caught.value.source == str(file)


def test_policy_is_frozen() -> None:
    """A loaded policy cannot be changed in place."""
    policy = load_policy(REFERENCE)
    with pytest.raises(ValidationError):
        policy.mode = "observe"  # type: ignore[misc]


def test_usd_keeps_decimal_precision() -> None:
    """Money is a Decimal; a quoted amount keeps its exact digits."""
    policy = Policy.from_dict({"budgets": {"max_usd": 0.10}})
    assert policy.budgets.max_usd == Decimal("0.10")
    assert Policy.from_dict({"budgets": {"max_usd": 0.1}}).budgets.max_usd == Decimal("0.1")


def test_json_file_must_be_strict_json(tmp_path: Path) -> None:
    """A .json file is parsed as JSON; YAML-only syntax there is an error."""
    file = tmp_path / "policy.json"
    file.write_text("tools: {allow: [kb.read]}\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(file)
    assert caught.value.problems[0].startswith("(file): line 1, column 1: not valid JSON")


def test_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    """A file saved with a UTF-8 byte-order mark loads like one without."""
    for suffix in (".yaml", ".json"):
        file = tmp_path / f"policy{suffix}"
        file.write_bytes(b"\xef\xbb\xbf" + json.dumps({"tools": {"allow": ["kb.read"]}}).encode())
        assert load_policy(file).tools.allow == ["kb.read"]


def test_yaml_anchors_and_merge_keys_still_work() -> None:
    """Merge keys are not mistaken for a key given twice."""
    text = """\
tools:
  allow: [a.read, b.read]
  specs:
    a.read: &read {effect: read, cost_usd: 0.01}
    b.read:
      <<: *read
      cost_usd: 0.02
"""
    policy = Policy.from_yaml(text)
    spec = policy.spec("b.read")
    assert spec is not None
    assert (spec.effect, spec.cost_usd) == ("read", Decimal("0.02"))


def test_argument_constraints_load() -> None:
    """Host wildcards, schemes, patterns and ranges are accepted as written."""
    policy = Policy.from_dict(
        {
            "tools": {
                "allow": ["http.get"],
                "specs": {
                    "http.get": {
                        "constraints": {
                            "url": {"schemes": ["https"], "hosts": ["*.example.com"]},
                            "q": {"pattern": "^[a-z ]+$", "max_length": 200},
                            "n": {"min": 1, "max": 10},
                        }
                    }
                },
            }
        }
    )
    spec = policy.spec("http.get")
    assert spec is not None
    assert spec.constraints["url"].hosts == ["*.example.com"]
    assert (spec.constraints["n"].min, spec.constraints["n"].max) == (1.0, 10.0)


def test_spec_for_a_tool_not_allowed_is_a_warning() -> None:
    """A spec does not allow a tool; the policy says so in its warnings."""
    policy = Policy.from_dict({"tools": {"specs": {"browser.open": {"effect": "read"}}}})
    assert not policy.allows("browser.open")
    assert policy.warnings() == [
        "tools.specs.browser.open: has a spec but is not in tools.allow, so it is denied"
    ]
