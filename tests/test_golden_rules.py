"""The golden parts one by one: fixture tools, expectations, the JSON path and the drift
rule (hypothesis over the rule's arithmetic)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.golden.baseline import compare_task, drifted
from corral.golden.expect import check
from corral.golden.figures import Figures
from corral.golden.fixtures import FixtureError, fixture_tool
from corral.golden.jsonpath import answer_json, read
from corral.golden.load import load_suite
from corral.golden.models import parse_spec
from corral.golden.runner import run_suite
from corral.golden.suite import Expect, Thresholds, ToolFixture


def fixture(data: dict[str, Any]) -> ToolFixture:
    return ToolFixture.model_validate(data)


# -- fixtures ------------------------------------------------------------------------------


def test_responses_answer_by_arguments_first_match_wins() -> None:
    """``when`` names the arguments that must match; the first matching answer wins; a call
    no answer matches fails naming the fixture."""
    tool = fixture_tool(
        "orders.lookup",
        fixture(
            {
                "responses": [
                    {"when": {"id": "A", "full": True}, "returns": "A in full"},
                    {"when": {"id": "A"}, "returns": "A"},
                    {"when": {"id": "B"}, "error": "B is archived"},
                ]
            }
        ),
    )
    assert tool(id="A", full=True) == "A in full"
    assert tool(id="A", full=False) == "A"
    with pytest.raises(FixtureError, match="B is archived"):
        tool(id="B")
    with pytest.raises(FixtureError, match=r"no answer of the fixture orders\.lookup matches"):
        tool(id="C")


def test_a_sequence_answers_call_by_call_and_repeats_its_last() -> None:
    """The n-th call gets the n-th answer; past the end, the last again; a fresh tool
    starts over."""
    spec = fixture({"sequence": [{"error": "timeout"}, {"returns": 1}, {"returns": 2}]})
    tool = fixture_tool("status.check", spec)
    with pytest.raises(FixtureError, match="timeout"):
        tool()
    assert [tool(), tool(), tool()] == [1, 2, 2]
    with pytest.raises(FixtureError):
        fixture_tool("status.check", spec)()


def test_a_fixture_is_declared_as_corral_tool_declares_it() -> None:
    """Effect, cost, description and argument schema reach the tool the gateway sees."""
    tool = fixture_tool(
        "refunds.issue",
        fixture(
            {
                "effect": "write",
                "cost_usd": 0.25,
                "description": "Issue a refund.",
                "args_schema": {"type": "object", "properties": {"amount": {"type": "number"}}},
                "responses": [{"returns": "ok"}],
            }
        ),
    )
    assert (tool.effect, tool.cost_usd, tool.description) == (
        "write",
        Decimal("0.25"),
        "Issue a refund.",
    )
    assert tool.args_schema["properties"] == {"amount": {"type": "number"}}


SUITE = """
suite: rules
tools:
  flaky.read: {sequence: [{error: down}, {returns: up}]}
  kb.search: {responses: [{when: {q: known}, returns: found}]}
  pay.send: {effect: write, responses: [{returns: sent}]}
tasks:
  - id: failing-tool
    task: check
    script: [{call: flaky.read}, {answer: never}]
    expect: {stop_reason: tool_error}
  - id: unmatched
    task: search
    script: [{call: kb.search, args: {q: unknown}}, {answer: never}]
    expect: {stop_reason: tool_error}
  - id: model-fails
    task: anything
    script: [{error: endpoint down}]
    expect: {stop_reason: model_error}
  - id: script-runs-out
    task: anything
    script: [{call: kb.search, args: {q: known}}]
    expect: {stop_reason: invalid_model_output, tool_calls: {min: 1, max: 1}}
  - id: several-calls
    task: both
    script:
      - calls: [{name: kb.search, args: {q: known}}, {name: flaky.read}]
      - {answer: done}
    policy: {tools: {allow: [kb.search, flaky.read], specs: {flaky.read: {retries: 1}}}}
    expect: {stop_reason: ok, called: [kb.search, flaky.read]}
  - id: write-approved
    task: pay
    tools: [pay.send]
    approvals: approve
    script: [{call: pay.send, args: {to: acme}}, {answer: paid}]
    policy: {tools: {allow: [pay.send]}}
    expect: {stop_reason: ok, called: [pay.send]}
  - id: write-denied
    task: pay
    tools: [pay.send]
    script: [{call: pay.send, args: {to: acme}}, {answer: paid}]
    policy: {tools: {allow: [pay.send]}}
    expect: {stop_reason: approval_denied, not_called: [pay.send]}
"""


def test_failures_of_tools_and_models_end_runs_as_the_gateway_ends_them(tmp_path: Path) -> None:
    """A fixture's error and an unmatched call are tool errors; an ``error`` turn is a model
    error; running out of script is unusable output; a write needing approval is approved
    or denied at once as the task says; every expectation as written holds."""
    path = tmp_path / "rules.yaml"
    path.write_text(SUITE)
    result = asyncio.run(run_suite(load_suite(path), parse_spec("scripted"), jobs=2))
    stops = {t.id: t.runs[0].stop_reason for t in result.tasks}
    assert stops == {
        "failing-tool": "tool_error",
        "unmatched": "tool_error",
        "model-fails": "model_error",
        "script-runs-out": "invalid_model_output",
        "several-calls": "ok",
        "write-approved": "ok",
        "write-denied": "approval_denied",
    }
    assert result.failures == []
    several = next(t for t in result.tasks if t.id == "several-calls").runs[0]
    assert several.by_tool == {"flaky.read": 2, "kb.search": 1}  # the retry is a call


# -- expectations --------------------------------------------------------------------------


def expect(data: dict[str, Any]) -> Expect:
    return Expect.model_validate(data)


def test_each_expectation_names_what_was_expected_and_what_the_run_did() -> None:
    """One failure per broken check, in the schema's order; the answer shown cut short."""
    run = Figures(
        stop_reason="max_tool_calls",
        answer='{"order": {"items": [{"sku": "A1"}]}, "total": 12}',
        tool_calls=6,
        by_tool={"kb.search": 6},
        requests=7,
        tokens=9000,
        usd=Decimal("0.5"),
    )
    failures = check(
        expect(
            {
                "stop_reason": ["ok", "tool_denied"],
                "tool_calls": {"min": 1, "max": 5},
                "tokens": {"max": 8000},
                "usd": {"min": 1},
                "called": ["orders.lookup"],
                "not_called": ["kb.search"],
                "answer": {
                    "equals": "x",
                    "contains": ["sku"],
                    "not_contains": ["total"],
                    "regex": "^no",
                    "json": [
                        {"path": "order.items[0].sku", "equals": "A1"},
                        {"path": "order.items[-1].sku", "equals": "B2"},
                        {"path": "total", "exists": False},
                        {"path": "missing"},
                        {"path": "order.items[0].sku", "contains": "Z"},
                    ],
                },
            }
        ),
        run,
    )
    got = repr(run.answer)[:37] + "..."  # 40 characters at most
    assert [(f.check, f.expected, f.got) for f in failures] == [
        ("stop_reason", "ok or tool_denied", "max_tool_calls"),
        ("tool_calls", "<= 5", "6"),
        ("tokens", "<= 8000", "9000"),
        ("usd", ">= 1", "0.5"),
        ("called", "orders.lookup called", "never called"),
        ("not_called", "kb.search never called", "6x"),
        ("answer equals", "'x'", got),
        ("answer not_contains", "'total'", got),
        ("answer regex", "'^no'", got),
        ("answer json order.items[-1].sku", "'B2'", "'A1'"),
        ("answer json total", "missing", "12"),
        ("answer json missing", "exists", "missing"),
        ("answer json order.items[0].sku", "contains 'Z'", "'A1'"),
    ]


def test_an_answer_in_a_fenced_json_block_is_read_as_json() -> None:
    """A model that wraps its JSON in prose and a ```json fence still passes a JSON check."""
    assert answer_json('Here:\n```json\n{"a": [1, 2]}\n```\nDone.') == (True, {"a": [1, 2]})
    assert answer_json("no json here") == (False, None)
    assert read({"a": [1, 2]}, "$.a[1]") == (True, 2)


# -- the drift rule ------------------------------------------------------------------------

runs = st.builds(
    Figures,
    stop_reason=st.sampled_from(["ok", "max_steps", "tool_error"]),
    answer=st.text(max_size=20),
    tool_calls=st.integers(0, 20),
    by_tool=st.dictionaries(st.sampled_from(["a.read", "b.write"]), st.integers(1, 5), max_size=2),
    requests=st.integers(1, 10),
    tokens=st.integers(0, 50_000),
    usd=st.decimals(min_value=0, max_value=5, places=4),
)


@given(was=st.lists(runs, min_size=1, max_size=5))
def test_a_result_never_drifts_from_itself(was: list[Figures]) -> None:
    """Compared with a baseline of the same runs (in any order), nothing drifts, at any
    threshold."""
    rows = compare_task("t", was, list(reversed(was)), Thresholds())
    assert drifted(rows) == []


@given(
    was=st.lists(st.integers(0, 1000), min_size=1, max_size=5),
    now=st.integers(0, 3000),
    rel=st.sampled_from([0.0, 0.1, 0.5]),
    absolute=st.sampled_from([0.0, 1.0, 10.0]),
)
def test_a_number_drifts_exactly_when_it_leaves_the_widened_range(
    was: list[int], now: int, rel: float, absolute: float
) -> None:
    """``tool_calls`` drifts iff the new value is outside ``[lo - slack, hi + slack]``,
    ``slack = max(abs, rel * hi)``."""
    thresholds = Thresholds.model_validate({"tool_calls": {"abs": absolute, "rel": rel}})
    base = [Figures(stop_reason="ok", tool_calls=v, requests=1) for v in was]
    row = next(
        r
        for r in compare_task(
            "t", base, [Figures(stop_reason="ok", tool_calls=now, requests=1)], thresholds
        )
        if r.figure == "tool_calls"
    )
    slack = max(absolute, rel * max(was))
    inside = max(0.0, min(was) - slack) <= now <= max(was) + slack
    assert (row.verdict == "ok") == inside


def test_a_new_stop_reason_drifts_and_one_the_baseline_saw_does_not() -> None:
    """With repeats, a stop reason among the baseline's is fine; a new one drifts."""
    base = [Figures(stop_reason="ok", requests=1), Figures(stop_reason="max_steps", requests=1)]
    seen = compare_task("t", base, [Figures(stop_reason="max_steps", requests=1)], Thresholds())
    new = compare_task("t", base, [Figures(stop_reason="tool_error", requests=1)], Thresholds())
    assert [r.verdict for r in seen if r.figure == "stop_reason"] == ["ok"]
    assert [r.verdict for r in new if r.figure == "stop_reason"] == ["drift"]
    off = Thresholds.model_validate({"stop_reason": "ignore", "answer_similarity": 0})
    assert {r.figure for r in compare_task("t", base, base, off)} == {
        "tool_calls",
        "tokens_per_request",
        "usd",
    }
