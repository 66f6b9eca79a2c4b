"""Hostile policies (files, text and dicts) end in a Policy or a PolicyError with one
line per problem, never another exception, in bounded time and memory; ``corral check``
exits 2 with those lines and never a traceback.

Shapes: nesting 5,000 and 100,000 deep, numbers of 5,000 digits, YAML alias bombs and
merge bombs, recursive aliases, huge strings, non-string keys, NUL bytes, invalid
UTF-8, a byte-order mark, a JSON object of a million keys, catastrophic regular
expressions, decimals whose plain form is a billion digits, objects that are no config
value; files that are directories, FIFOs, missing or too large. Then fuzzing: random
JSON-like trees with hostile leaves through every entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.cli.check import check_command
from corral.exceptions import PolicyError
from corral.policy.schema import Policy, load_policy


def problems_of(make: Any) -> list[str]:
    """The problem lines ``make()`` raises as a PolicyError (it must raise one)."""
    with pytest.raises(PolicyError) as caught:
        make()
    lines = caught.value.problems
    assert lines and all("\n" not in line and len(line) < 1000 for line in lines)
    return lines


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")


def _self_containing() -> dict[str, Any]:
    data: dict[str, Any] = {}
    data["tools"] = data
    return data


BILLION_LAUGHS = "\n".join(
    [
        'a: &a ["x","x","x","x","x","x","x","x","x","x"]',
        *(
            f"{n}: &{n} [" + ",".join([f"*{p}"] * 10) + "]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "tools: {allow: *i}",
    ]
)
MERGE_BOMB = "a0: &a0 {k: 1}\n" + "".join(
    f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: 1}}\n" for i in range(1, 40)
)

# name -> (how to load it, a fragment the problem lines must hold)
TEXT_CASES: dict[str, tuple[Any, str]] = {
    "yaml_list_5000_deep": (lambda: Policy.from_yaml("[" * 5000 + "]" * 5000), "levels deep"),
    "yaml_map_3000_deep": (
        lambda: Policy.from_yaml("tools: " + "{a: " * 3000 + "1" + "}" * 3000),
        "levels deep",
    ),
    "yaml_max_steps_5000_digits": (
        lambda: Policy.from_yaml("budgets: {max_steps: " + "1" * 5000 + "}"),
        "5000 digits",
    ),
    "json_max_steps_5000_digits": (
        lambda: Policy.from_json('{"budgets": {"max_steps": ' + "1" * 5000 + "}}"),
        "5000 digits",
    ),
    "billion_laughs": (lambda: Policy.from_yaml(BILLION_LAUGHS), "aliases are expanded"),
    "merge_bomb": (lambda: Policy.from_yaml(MERGE_BOMB), "aliases are expanded"),
    "recursive_alias": (lambda: Policy.from_yaml("tools: &t {allow: *t}\n"), "contains it"),
    "yaml_key_not_a_string": (lambda: Policy.from_yaml("budgets: {1: 2}"), "keys must be"),
    "yaml_key_null": (lambda: Policy.from_yaml("budgets: {null: 2}"), "keys must be"),
    "yaml_nul_escape": (lambda: Policy.from_yaml('version: "a\\0b"'), "NUL"),
    "yaml_raw_nul": (lambda: Policy.from_yaml("version: a\x00b"), "not valid YAML"),
    "json_nul_escape": (lambda: Policy.from_json('{"version": "a\\u0000b"}'), "NUL"),
    "json_deep": (lambda: Policy.from_json("[" * 100_000 + "]" * 100_000), "levels deep"),
    "json_500_deep": (
        lambda: Policy.from_json('{"tools": ' + "[" * 500 + "]" * 500 + "}"),
        "levels deep",
    ),
    "json_million_keys": (
        lambda: Policy.from_json("{" + ",".join(f'"k{i}": 1' for i in range(10**6)) + "}"),
        "the limit is",
    ),
    "huge_yaml_string": (lambda: Policy.from_yaml("version: " + "x" * 20_000), "characters long"),
}

DICT_CASES: dict[str, tuple[Any, str]] = {
    "list_100000_deep": ({"tools": {"allow": deep_list(100_000)}}, "levels deep"),
    "max_steps_5000_digits": ({"budgets": {"max_steps": 10**5000}}, "digits"),
    "contains_itself": (_self_containing(), "contains itself"),
    "key_not_a_string": ({"budgets": {(1, 2): 3}}, "keys must be strings"),
    "nul_in_value": ({"version": "a\x00b"}, "NUL"),
    "nul_in_key": ({"budgets": {"max\x00steps": 3}}, "NUL"),
    "huge_string": ({"version": "x" * 10**7}, "characters long"),
    "unshowable_object": ({"version": Unshowable()}, "must be text, a number"),
    "object_in_enum": (
        {"tools": {"specs": {"a.b": {"constraints": {"x": {"enum": [object()]}}}}}},
        "must be text, a number",
    ),
    "decimal_exponent_bomb": ({"budgets": {"max_usd": Decimal("1e999999999")}}, "1e-30 and 1e30"),
    "decimal_object_bomb": ({"budgets": {"max_usd": Decimal("1e-999999999")}}, "1e30"),
    "too_many_values": ({"tools": {"allow": ["a.b"] * 200_000}}, "values"),
    "redos_constraint": (
        {"tools": {"specs": {"a.b": {"constraints": {"x": {"pattern": "(a+)+$"}}}}}},
        "exponential time",
    ),
    "redos_redact": ({"redact": {"patterns": ["(a|ab)*c"]}}, "exponential time"),
    "pattern_too_long": ({"redact": {"patterns": ["a" * 5000]}}, "the limit is 1000"),
}


@pytest.mark.parametrize("name", sorted(TEXT_CASES))
def test_hostile_policy_text_is_one_line_per_problem(name: str) -> None:
    """Each hostile YAML or JSON text gives a PolicyError of one-line problems naming it."""
    make, fragment = TEXT_CASES[name]
    assert any(fragment in line for line in problems_of(make)), name


@pytest.mark.parametrize("name", sorted(DICT_CASES))
def test_hostile_policy_dict_is_one_line_per_problem(name: str) -> None:
    """Each hostile dict gives a PolicyError of one-line problems naming it."""
    data, fragment = DICT_CASES[name]
    assert any(fragment in line for line in problems_of(lambda: Policy.from_dict(data))), name


def test_the_issues_three_examples() -> None:
    """The issue's examples: a YAML list nested 5,000 deep, a max_steps of 5,000 digits and
    a 100,000-deep list in Policy.from_dict: one clear line each, where they raised
    RecursionError and ValueError."""
    assert problems_of(lambda: Policy.from_yaml("[" * 5000 + "]" * 5000)) == [
        "(file): line 1, column 66: not valid YAML (nested more than 64 levels deep)"
    ]
    assert problems_of(lambda: Policy.from_yaml("budgets:\n  max_steps: " + "9" * 5000)) == [
        "(file): line 2, column 14: not valid YAML (a number of 5000 digits (the limit is 30))"
    ]
    # `limits` is the first level, each [0] one more: the 65th is where it stops.
    assert problems_of(lambda: Policy.from_dict({"limits": deep_list(100_000)})) == [
        "limits" + "[0]" * 63 + ": nested more than 64 levels deep"
    ]


def test_bounds_leave_real_policies_alone() -> None:
    """What a real policy uses passes: a JSON Schema of 25 nested objects, anchors and
    merges, numbers
    and decimals of ordinary sizes, str subclasses (read as plain text), patterns such as
    `^[A-Z]{3}-\\d+$` and `(\\d{1,3}\\.){3}\\d{1,3}`."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(25):
        schema = {"type": "object", "properties": {"x": schema}}

    class Name(str):
        pass

    policy = Policy.from_dict(
        {
            "tools": {
                "allow": [Name("a.b")],
                "specs": {
                    "a.b": {
                        "args_schema": schema,
                        "cost_usd": 0.000001,
                        "constraints": {"x": {"pattern": r"^[A-Z]{3}-\d+$"}},
                    }
                },
            },
            "budgets": {"max_tokens": 10**12, "max_usd": Decimal("1500.25")},
            "redact": {"patterns": [r"(\d{1,3}\.){3}\d{1,3}"]},
        }
    )
    assert type(policy.tools.allow[0]) is str
    anchored = Policy.from_yaml(
        "tools:\n  allow: [a.b, c.d]\n  specs:\n    a.b: &spec {effect: read}\n"
        "    c.d: {<<: *spec, cost_usd: 0.5}\n"
    )
    assert anchored.tools.specs["c.d"].effect == "read"


def test_a_value_past_the_pattern_input_bound_is_refused() -> None:
    """A constraint's pattern runs only on values of at most 10,000 characters: a longer
    one is refused (argument_not_allowed), so no pattern runs on unbounded input."""

    @corral.tool(name="a.b", effect="read")
    def ab(x: str) -> str:
        return "ok"

    policy = Policy.from_dict(
        {"tools": {"allow": ["a.b"], "specs": {"a.b": {"constraints": {"x": {"pattern": "a*"}}}}}}
    )
    with corral.Run(policy, tools=[ab], store="memory://") as run:
        assert run.call("a.b", {"x": "a" * 10_000}) == "ok"
        run.call("a.b", {"x": "a" * 10_001})
    assert run.result.stop is not None
    assert run.result.stop.extra.get("why") == "argument_not_allowed"


# -- files and `corral check` -------------------------------------------------------------------


def check_file(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = check_command(path, strict=False, tools=None, as_json=False)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.splitlines()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\xff\xfe tools: {}", "not UTF-8 text"),
        (b"tools: {allow: [a\x00b]}", "not valid YAML (special characters"),
        (("[" * 5000 + "]" * 5000).encode(), "levels deep"),
        (b"#" * 1_100_000, "the limit is 1000000"),
        (BILLION_LAUGHS.encode(), "aliases are expanded"),
    ],
    ids=["invalid_utf8", "nul", "deep", "huge", "alias_bomb"],
)
def test_check_a_hostile_file_exits_2(
    content: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`corral check` on a hostile file exits 2 with one line per problem under a heading."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    code, lines = check_file(path, capsys)
    assert code == 2
    assert any(fragment in line for line in lines[1:]), lines


def test_check_accepts_a_byte_order_mark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A UTF-8 byte-order mark is not part of the policy (YAML and JSON alike)."""
    for name, text in (("p.yaml", "tools: {allow: [kb.read]}"), ("p.json", '{"tools": {}}')):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
        code, _ = check_file(tmp_path / name, capsys)
        assert code == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_check_a_fifo_does_not_hang(tmp_path: Path) -> None:
    """A FIFO is never opened (it would block until a writer came): exit 2 at once."""
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "corral", "check", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "is not a regular file" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["directory", "missing"])
def test_check_a_path_that_is_no_file(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory or a missing path is one line and exit 2."""
    path = tmp_path if kind == "directory" else tmp_path / "nope.yaml"
    code, lines = check_file(path, capsys)
    assert code == 2 and len(lines) == 2


def test_load_policy_refuses_a_path_with_nul() -> None:
    """A path holding NUL cannot name a file: a PolicyError, not a ValueError."""
    assert problems_of(lambda: load_policy("policy\x00.yaml"))


# -- fuzzing ------------------------------------------------------------------------------------

_plain_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["kb.read", "stop_all", "observe", "1d", "(a+)+$", "a\x00", "1e99999"]),
)
_hostile_leaf = st.one_of(
    _plain_leaf,
    st.integers(min_value=10**4400, max_value=10**4500),
    st.decimals(allow_nan=True),
    st.binary(max_size=8),
    st.sampled_from([Unshowable, object, set]).map(lambda make: make()),
)
_keys = st.one_of(
    st.sampled_from(["tools", "allow", "specs", "budgets", "max_steps", "limits", "mode"]),
    st.text(max_size=10),
)


def _tree(leaf: Any, key: Any) -> Any:
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(key, inner, max_size=4)
        ),
        max_leaves=25,
    )


def outcome(make: Any) -> Policy | PolicyError:
    """A Policy or the PolicyError raised (anything else fails the test)."""
    try:
        return make()  # type: ignore[no-any-return]
    except PolicyError as exc:
        assert exc.problems and all("\n" not in line for line in exc.problems)
        return exc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=_tree(_hostile_leaf, st.one_of(_keys, st.integers(), st.none())),
    wrap=st.integers(min_value=0, max_value=2000),
)
def test_fuzzed_dicts_give_a_policy_or_a_policy_error(tree: Any, wrap: int) -> None:
    """Random trees of hostile leaves, wrapped up to 2,000 lists deep, as a policy dict and
    as one section of it: a Policy or a PolicyError, nothing else."""
    for _ in range(wrap):
        tree = [tree]
    outcome(lambda: Policy.from_dict(tree))
    outcome(lambda: Policy.from_dict({"tools": tree}))
    result = outcome(lambda: Policy.from_dict({"budgets": {"max_steps": tree}}))
    if isinstance(result, Policy):
        assert result.digest  # a policy that loads can also be hashed


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_tree(_plain_leaf, _keys), as_json=st.booleans())
def test_fuzzed_text_gives_a_policy_or_a_policy_error(tree: Any, as_json: bool) -> None:
    """Random JSON-like trees written as JSON or YAML text: a Policy or a PolicyError."""
    if as_json:
        text = json.dumps(tree, allow_nan=True)
        outcome(lambda: Policy.from_json(text))
    else:
        text = yaml.safe_dump(tree, allow_unicode=True)
        outcome(lambda: Policy.from_yaml(text))


_yaml_fragments = st.lists(
    st.sampled_from(
        [
            "[",
            "]",
            "{",
            "}",
            "&a ",
            "*a ",
            "<<: ",
            "a: ",
            "- ",
            ", ",
            "1" * 40,
            '"\\0"',
            "\n  ",
            "!!binary ",
        ]
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_yaml_fragments)
def test_fuzzed_yaml_fragments_give_a_policy_or_a_policy_error(text: str) -> None:
    """Random YAML made of brackets, anchors, aliases, merges and long numbers: a Policy or
    a PolicyError."""
    outcome(lambda: Policy.from_yaml(text))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=_tree(_plain_leaf, _keys), suffix=st.sampled_from([".yaml", ".json"]))
def test_fuzzed_files_through_check_exit_0_or_2(
    tree: Any, suffix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`corral check` on random policy files: exit 0 or 2, problems one per line, no
    traceback."""
    path = tmp_path / f"fuzz{threading.get_ident()}{suffix}"
    text = json.dumps(tree) if suffix == ".json" else yaml.safe_dump(tree)
    path.write_text(text, encoding="utf-8")
    code, lines = check_file(path, capsys)
    assert code in (0, 2)
    if code == 2:
        assert len(lines) >= 2
