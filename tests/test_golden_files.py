"""Broken golden files (suites, scripts, baselines) and model specs: each problem one line
naming the file, the line and the path, exit 2; never a traceback, whatever the file holds."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from corral.cli.app import app
from corral.exceptions import ConfigError, SuiteError
from corral.golden import jsonpath
from corral.golden.load import load_suite
from corral.golden.models import parse_spec

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "golden" / "support.yaml"
GOOD = """suite: s
tools:
  kb.search:
    responses: [{returns: hi}]
tasks:
  - id: a
    task: hello
    script: [{answer: hi}]
"""


def golden(*args: str) -> Any:
    return CliRunner().invoke(app, ["golden", "run", *args])


# (what the file says, the line the problem is on, a part of its message)
BROKEN: list[tuple[str, str, int | None, str]] = [
    ("empty file", "", None, "holds no document"),
    ("not a mapping", "- a\n- b\n", 1, "(top level): must be a mapping"),
    ("no tasks", "suite: s\ntasks: []\n", 2, "tasks: list should have at least 1 item"),
    ("tasks missing", "suite: s\n", 1, "tasks: is required"),
    ("unknown key", GOOD + "extra: 1\n", 9, "extra: unknown key"),
    ("bad YAML", "suite: s\ntasks: [\n", 3, "not valid YAML"),
    ("key twice", "suite: s\nsuite: t\ntasks: []\n", 2, "appears twice"),
    ("tab indent", "suite: s\ntasks:\n\t- id: a\n", 3, "not valid YAML"),
    (
        "bad effect",
        GOOD.replace("    responses", "    effect: rread\n    responses"),
        4,
        "tools.kb.search.effect: must be one of 'read' or 'write', got 'rread'",
    ),
    (
        "returns and error",
        GOOD.replace("{returns: hi}", "{returns: hi, error: nope}"),
        4,
        "an answer takes exactly one of returns, error",
    ),
    (
        "no answers",
        GOOD.replace("    responses: [{returns: hi}]", "    effect: read"),
        3,
        "takes responses or a sequence",
    ),
    (
        "when in a sequence",
        GOOD.replace("responses: [{returns: hi}]", "sequence: [{when: {q: 1}, returns: hi}]"),
        3,
        "its answers take no 'when'",
    ),
    ("bad tool name", GOOD.replace("kb.search:", "KB Search:"), 3, "tool names use only"),
    ("negative cost", GOOD.replace("    responses", "    cost_usd: -1\n    responses"), 4, "zero"),
    ("cost as text", GOOD.replace("    responses", "    cost_usd: '1'\n    responses"), 4, "'1'"),
    ("bad task id", GOOD.replace("id: a", "id: 'a b'"), 6, "a task id uses letters"),
    ("task twice", GOOD + "  - {id: a, task: again}\n", 9, "'a' names two tasks"),
    (
        "unknown fixture",
        GOOD.replace("task: hello", "task: hello\n    tools: [kb.nope]"),
        8,
        "kb.nope",
    ),
    (
        "turn of two kinds",
        GOOD.replace("{answer: hi}", "{answer: hi, call: kb.search}"),
        8,
        "a turn",
    ),
    (
        "args without call",
        GOOD.replace("{answer: hi}", "{answer: hi, args: {}}"),
        8,
        "args go with",
    ),
    ("negative tokens", GOOD.replace("{answer: hi}", "{answer: hi, input_tokens: -3}"), 8, "zero"),
    (
        "unknown stop reason",
        GOOD + "    expect: {stop_reason: okay}\n",
        9,
        "did you mean 'ok'?",
    ),
    ("min above max", GOOD + "    expect: {tool_calls: {min: 3, max: 1}}\n", 9, "min (3) is above"),
    ("bad regex", GOOD + "    expect: {answer: {regex: '('}}\n", 9, "not a regular expression"),
    (
        "bad JSON path",
        GOOD + "    expect: {answer: {json: [{path: 'a..b'}]}}\n",
        9,
        "JSON path 'a..b'",
    ),
    ("bad threshold", GOOD + "thresholds: {answer_similarity: 2}\n", 9, "answer_similarity"),
    ("bad tolerance", GOOD + "thresholds: {usd: {rel: -1}}\n", 9, "thresholds.usd.rel"),
    ("bad policy", GOOD + "policy: {budgets: {max_steps: 0}}\n", 9, "policy: budgets.max_steps"),
    ("missing policy file", GOOD + "policy: nowhere.yaml\n", 9, "no such file"),
    (
        "alias bomb",
        "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
        + "".join(
            f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            for p, c in zip("abcdef", "bcdefg", strict=True)
        ),
        None,
        "values once its aliases are expanded",
    ),
]


@pytest.mark.parametrize(("what", "text", "line", "says"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_suite_is_one_line_per_problem_with_its_line(
    tmp_path: Path, what: str, text: str, line: int | None, says: str
) -> None:
    """Each broken suite: exit 2, ``FILE:LINE: path: message`` on stderr, no traceback."""
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    result = golden(str(path), "--model", "scripted")
    assert result.exit_code == 2, (what, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert says in result.stderr, result.stderr
    where = f"{path}:{line}: " if line is not None else f"{path}"
    problem = next(x for x in result.stderr.splitlines() if says in x)
    assert where in problem, problem


def test_a_suite_that_is_no_file_is_named(tmp_path: Path) -> None:
    """A missing path, a folder: exit 2 naming it."""
    for path in (tmp_path / "nope.yaml", tmp_path):
        result = golden(str(path), "--model", "scripted")
        assert result.exit_code == 2 and str(path) in result.stderr


BAD_SPECS = [
    ("bogus", "not a model spec"),
    ("openai:", "not a model spec"),
    ("openai:m@ftp://x", "openai:MODEL@BASE_URL"),
    ("python:nomodule_here:f", "cannot load it"),
    ("python:json", "write python:MODULE:FACTORY"),
    ("python:json:dumps_nothing", "cannot load it"),
    ("scripted:/nonexistent/script.yaml", "no such file"),
]


@pytest.mark.parametrize(("spec", "says"), BAD_SPECS, ids=[s for s, _ in BAD_SPECS])
def test_a_model_spec_that_cannot_work_is_a_usage_error(spec: str, says: str) -> None:
    """``--model`` that names no model: exit 2 with the reason."""
    result = golden(str(SUITE), "--model", spec)
    assert result.exit_code == 2, result.stdout
    assert says in result.stderr, result.stderr


def test_openai_at_openai_without_a_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """``openai:MODEL`` with no key: the adapter's message, naming OPENAI_API_KEY, exit 2."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = golden(str(SUITE), "--model", "openai:gpt-4o-mini")
    assert result.exit_code == 2 and "OPENAI_API_KEY" in result.stderr


def test_a_factory_that_returns_no_model_fails_the_run_not_the_process(tmp_path: Path) -> None:
    """``python:`` naming a callable that returns something else: a ConfigError at the first
    run, exit 2."""
    suite = load_suite(SUITE).suite
    with pytest.raises(ConfigError, match="returned dict, not a model"):
        parse_spec("python:builtins:dict").build(suite, suite.tasks[0])
    result = golden(str(SUITE), "--model", "python:builtins:dict")
    assert result.exit_code == 2 and "not a model" in result.stderr


def test_a_script_for_tasks_the_suite_lacks_is_refused(tmp_path: Path) -> None:
    """A script naming an unknown task is a typo: exit 2 naming it."""
    script = tmp_path / "script.yaml"
    script.write_text("tasks:\n  refund-polcy: [{answer: hi}]\n")
    result = golden(str(SUITE), "--model", f"scripted:{script}")
    assert result.exit_code == 2 and "refund-polcy" in result.stderr


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("{}", "format: is required"),
        ("[1]", "must be a"),
        (
            '{"format": "corral-golden-baseline/1", "suite": "support", "model": "x", '
            '"repeat": 1, "tasks": {"a": [{"stop_reason": "ok"}]}}',
            "tool_calls: is required",
        ),
        ("{not json", "not valid YAML"),
    ],
)
def test_a_broken_baseline_is_a_usage_error(tmp_path: Path, body: str, says: str) -> None:
    """A baseline that is no baseline: exit 2, the problem and its line."""
    path = tmp_path / "b.json"
    path.write_text(body)
    result = golden(str(SUITE), "--model", "scripted", "--baseline", str(path))
    assert result.exit_code == 2, result.stdout
    assert says in result.stderr and str(path) in result.stderr


def test_a_baseline_of_another_suite_is_refused(tmp_path: Path) -> None:
    """Comparing with the baseline of another suite is a mistake: exit 2."""
    base = json.loads((ROOT / "examples" / "golden" / "support.baseline.json").read_text())
    base["suite"] = "billing"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(base))
    result = golden(str(SUITE), "--model", "scripted", "--baseline", str(path))
    assert result.exit_code == 2 and "'billing'" in result.stderr


def test_a_policy_path_is_read_next_to_the_suite(tmp_path: Path) -> None:
    """``policy: NAME.yaml`` is read from the suite's folder, whatever the working directory."""
    (tmp_path / "strict.yaml").write_text("tools: {allow: []}\n")
    suite = tmp_path / "s.yaml"
    suite.write_text(
        GOOD.replace("[{answer: hi}]", "[{call: kb.search}, {answer: hi}]")
        + "    expect: {stop_reason: tool_denied}\npolicy: strict.yaml\n"
    )
    result = golden(str(suite), "--model", "scripted")
    assert result.exit_code == 0, result.stdout + result.stderr


# -- whatever the file holds: a suite or a SuiteError -------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = [
    "suite",
    "tools",
    "tasks",
    "policy",
    "thresholds",
    "id",
    "task",
    "script",
    "expect",
    "responses",
    "sequence",
    "returns",
    "error",
    "when",
    "answer",
    "call",
    "args",
    "stop_reason",
    "tool_calls",
    "json",
    "path",
    "kb.search",
]
shaped = st.recursive(
    values,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=shaped)
def test_any_value_loads_as_a_suite_or_a_suite_error(tmp_path_factory: Any, data: Any) -> None:
    """Random trees shaped like suites, written as YAML: a suite or a SuiteError, nothing
    else."""
    path = tmp_path_factory.mktemp("h") / "suite.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        load_suite(path)
    except SuiteError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(min_value=0, max_value=len(SUITE.read_text())),
    insert=st.text(alphabet=string.printable, max_size=4),
    drop=st.integers(min_value=0, max_value=6),
)
def test_a_damaged_repository_suite_loads_or_says_why(
    tmp_path_factory: Any, cut: int, insert: str, drop: int
) -> None:
    """The repository's suite with a few characters replaced: a suite or a SuiteError."""
    text = SUITE.read_text()
    path = tmp_path_factory.mktemp("h") / "suite.yaml"
    path.write_text(text[:cut] + insert + text[cut + drop :], encoding="utf-8")
    try:
        load_suite(path)
    except SuiteError as exc:
        assert exc.problems


@given(path=st.text(max_size=20))
def test_any_json_path_parses_or_says_where(path: str) -> None:
    """A JSON path parses into steps or raises ValueError naming it; a parsed path reads
    any value without raising."""
    try:
        steps = jsonpath.parse(path)
    except ValueError as exc:
        assert repr(path) in str(exc)
        return
    assert steps
    jsonpath.read({"a": [1, {"b": None}]}, path)


def test_a_task_without_a_script_cannot_run_scripted(tmp_path: Path) -> None:
    """``--model scripted`` with a task that has no turns: exit 2 naming the task."""
    suite = tmp_path / "s.yaml"
    suite.write_text(GOOD + "  - {id: bare, task: nothing to play}\n")
    result = golden(str(suite), "--model", "scripted")
    assert result.exit_code == 2 and "no script for the tasks bare" in result.stderr


def test_a_baseline_that_cannot_be_written_is_refused_before_anything_runs(tmp_path: Path) -> None:
    """``--save-baseline`` into a folder that does not exist: exit 2 at once."""
    target = tmp_path / "no" / "such" / "b.json"
    result = golden(str(SUITE), "--model", "scripted", "--save-baseline", str(target))
    assert result.exit_code == 2 and "no folder" in result.stderr
    assert "golden suite" not in result.stdout  # nothing ran
