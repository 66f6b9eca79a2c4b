"""Tool outputs of every hostile shape end the call with ``invalid_tool_output`` (or are
cleaned), through every face of a run, and never escape as an exception.

Shapes: deep nesting (lists, dicts, mixed; 1e5 and 1e6 deep), containers holding
themselves, objects whose ``__str__``/``__repr__``/``__eq__``/``__hash__``/``__len__``
raise or return no string, ints past Python's 4,300-digit limit, bytes, generators, NaN,
Decimal, non-string keys, ``str`` subclasses with methods of their own; also tools that
raise a ``BaseException`` of their own or an exception that cannot be printed.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.stops import STOP_REASONS
from corral.stores.base import Store
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final

sys.path.insert(0, str(Path(__file__).parent / "stores"))
from pg import fresh_store, require_postgres

ENFORCE = corral.Policy.from_dict({"tools": {"allow": ["t.read"]}})
OBSERVE = corral.Policy.from_dict({"tools": {"allow": ["t.read"]}, "mode": "observe"})
SCHEMA = corral.Policy.from_dict(
    {
        "tools": {
            "allow": ["t.read"],
            "specs": {
                "t.read": {
                    "output_schema": {"type": "object", "properties": {"k": {"enum": [1, "x"]}}}
                }
            },
        }
    }
)
POLICIES = {"enforce": ENFORCE, "observe": OBSERVE, "schema": SCHEMA}


def nested(depth: int, kind: str = "list") -> Any:
    """A value nested ``depth`` deep: lists, dicts, or both in turn (built without recursion)."""
    value: Any = []
    for i in range(depth):
        as_list = kind == "list" or (kind == "mixed" and i % 2 == 0)
        value = [value] if as_list else {"k": value}
    return value


class RaisingStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class RaisingEq:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    __hash__ = None  # type: ignore[assignment]


class RaisingHash:
    def __hash__(self) -> int:
        raise RuntimeError("no hash")


class RaisingLen(list[int]):
    def __len__(self) -> int:
        raise RuntimeError("no len")


class StrNotStr:
    def __str__(self) -> Any:
        return 5


class OddStr(str):
    """A str subclass whose own methods lie or raise."""

    def __len__(self) -> int:
        return -1

    def __contains__(self, item: object) -> bool:
        raise RuntimeError("no contains")

    def __getitem__(self, item: Any) -> Any:
        return 5


def _self_list() -> list[Any]:
    box: list[Any] = []
    box.append(box)
    return box


def _self_dict() -> dict[str, Any]:
    box: dict[str, Any] = {}
    box["me"] = box
    return box


def _generator() -> Any:
    yield 1


HOSTILE: dict[str, Any] = {
    "list_1e5_deep": lambda: nested(100_000),
    "dict_1e5_deep": lambda: nested(100_000, "dict"),
    "mixed_1e5_deep": lambda: nested(100_000, "mixed"),
    "self_list": _self_list,
    "self_dict": _self_dict,
    "raising_str": RaisingStr,
    "raising_eq_in_list": lambda: [RaisingEq()],
    "raising_hash_value": lambda: {1: RaisingHash()},
    "raising_len_list": lambda: RaisingLen([1, 2]),
    "str_returns_int": StrNotStr,
    "huge_int": lambda: 10**5000,
    "huge_int_in_list": lambda: [10**5000],
    "bytes": lambda: b"\x00\xff",
    "generator": _generator,
    "nan": lambda: math.nan,
    "nan_in_list": lambda: [math.nan],
    "decimal": lambda: Decimal("1.5"),
    "non_str_keys": lambda: {1: "a", "b": 2, None: 3},
    "tuple_key": lambda: {(1, 2): 3},
    "odd_str": lambda: OddStr("hello"),
}


def reading(value: Any) -> corral.Tool:
    """A read tool returning ``value`` (made afresh for each call)."""

    @corral.tool(name="t.read", effect="read")
    def t(q: str = "") -> Any:
        return value() if callable(value) else value

    return t


def via_run(policy: corral.Policy, value: Any) -> corral.RunResult:
    model = ScriptedModel([call("t.read"), final("done")])
    return corral.run("x", model=model, tools=[reading(value)], policy=policy, store=MemoryStore())


def via_arun(policy: corral.Policy, value: Any) -> corral.RunResult:
    model = ScriptedModel([call("t.read"), final("done")])
    coro = corral.arun("x", model=model, tools=[reading(value)], policy=policy, store=MemoryStore())
    return asyncio.run(coro)


def via_call(policy: corral.Policy, value: Any) -> corral.RunResult:
    with corral.Run(policy, tools=[reading(value)], store=MemoryStore()) as run:
        run.call("t.read", {})
        run.finish("done")
    return run.result


def via_async_call(policy: corral.Policy, value: Any) -> corral.RunResult:
    async def go() -> corral.RunResult:
        async with corral.AsyncRun(policy, tools=[reading(value)], store=MemoryStore()) as run:
            await run.call("t.read", {})
            await run.finish("done")
        return run.result

    return asyncio.run(go())


def via_report(policy: corral.Policy, value: Any) -> corral.RunResult:
    with corral.Run(policy, tools=[reading("unused")], store=MemoryStore()) as run:
        ticket = run.authorize("t.read", {})
        run.report(ticket, value() if callable(value) else value)
        run.finish("done")
    return run.result


FACES = {
    "run": via_run,
    "arun": via_arun,
    "Run.call": via_call,
    "AsyncRun.call": via_async_call,
    "Run.report": via_report,
}


def check_ends_well(result: corral.RunResult, policy_name: str) -> None:
    """Enforced: the run stops invalid_tool_output (or the value was cleaned and it is ok).
    Observed: it runs on (the problem recorded as a would-be stop)."""
    assert result.stop_reason in STOP_REASONS
    if policy_name == "observe":
        assert result.stop_reason == "ok"
        return
    assert result.stop_reason in ("invalid_tool_output", "ok")
    if result.stop_reason == "invalid_tool_output":
        assert result.stop is not None and result.stop.detail == "t.read"
        assert result.stop.message and len(result.stop.message) < 2000


@pytest.mark.parametrize("face", sorted(FACES))
@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_hostile_output_ends_the_call_through_every_face(shape: str, face: str) -> None:
    """Every hostile shape, returned by a tool or reported for one, ends invalid_tool_output
    (or is cleaned) and raises nothing."""
    check_ends_well(FACES[face](ENFORCE, HOSTILE[shape]), "enforce")


@pytest.mark.parametrize("policy_name", ["observe", "schema"])
@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_a_hostile_output_under_a_schema_or_observed_raises_nothing(
    shape: str, policy_name: str
) -> None:
    """Validated against a schema, or observed (shown bounded instead of refused), a hostile
    output still ends the run with a stop reason, never an exception."""
    check_ends_well(via_run(POLICIES[policy_name], HOSTILE[shape]), policy_name)


def test_a_list_nested_100000_deep_is_invalid_tool_output() -> None:
    """The issue's example: a tool returning a list nested 100,000 deep stops the run with
    invalid_tool_output, where it raised RecursionError."""
    result = via_run(ENFORCE, lambda: nested(100_000))
    assert result.stop_reason == "invalid_tool_output"
    assert result.stop is not None
    # Refused by its depth, or first by its size (200,000 brackets against a 4,000 cap).
    assert result.stop.extra["problem"] in ("too_deep", "output_too_large")


@pytest.mark.parametrize("face", ["run", "Run.report"])
def test_a_list_nested_a_million_deep_is_invalid_tool_output(face: str) -> None:
    """A million levels deep (built in about half a second) ends the same way, returned by
    the tool or reported for it."""
    result = FACES[face](ENFORCE, lambda: nested(1_000_000))
    assert result.stop_reason == "invalid_tool_output"


def test_an_observed_unrenderable_output_reaches_the_model_as_bounded_text() -> None:
    """In observe mode the model sees a bounded text in place of an output that cannot be
    shown, and the run records the stop that would have happened."""
    model = ScriptedModel([call("t.read"), final("done")])
    result = corral.run(
        "x", model=model, tools=[reading(RaisingStr)], policy=OBSERVE, store=MemoryStore()
    )
    assert result.stop_reason == "ok"
    assert [w.reason for w in result.would_stop] == ["invalid_tool_output"]
    seen = model.requests[-1].messages[-1]["content"]
    assert "RaisingStr that cannot be shown" in seen


def test_a_cleaned_structured_output_is_plain_json() -> None:
    """A structured output reaches the caller as plain JSON data: string keys, lists, no
    subclasses, the same value a stored outcome would replay."""
    tool = reading(lambda: {1: ("a", OddStr("b"))})
    with corral.Run(ENFORCE, tools=[tool], store=MemoryStore()) as run:
        out = run.call("t.read", {})
        run.finish("done")
    assert out == {"1": ["a", "b"]}
    assert type(out["1"][1]) is str
    assert run.result.stop_reason == "ok"


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        with fresh_store(require_postgres()) as pg:
            yield pg
        return
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.db")
    try:
        yield store
    finally:
        store.close()


@pytest.mark.parametrize("shape", ["text", "structured"])
def test_a_nul_in_an_output_is_replaced_on_every_backend(any_store: Store, shape: str) -> None:
    """A NUL in a read's or a write's output (text, or a key or value of structured data)
    reaches the model as U+FFFD and is stored as an outcome on every backend (PostgreSQL
    refuses NUL in text), where a write's outcome failed to be stored."""
    value: Any = "a\x00b" if shape == "text" else {"k\x00": ["a\x00b", 1]}
    cleaned: Any = "a\ufffdb" if shape == "text" else {"k\ufffd": ["a\ufffdb", 1]}

    @corral.tool(name="t.write", effect="write")
    def write(q: str = "") -> Any:
        return value

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["t.read", "t.write"]}, "writes": {"require_approval": False}}
    )
    with corral.Run(policy, tools=[reading(lambda: value), write], store=any_store) as run:
        assert run.call("t.read", {}) == cleaned
        assert run.call("t.write", {}) == cleaned
        run.finish("done")
    assert run.result.stop_reason == "ok", run.result.stop


class Boom(BaseException):
    """A BaseException of a tool's own, not an Exception."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print")


@pytest.mark.parametrize("raised", [Boom("b"), Unprintable(), RecursionError("deep")])
@pytest.mark.parametrize("face", ["run", "arun", "Run.call", "AsyncRun.call"])
def test_a_tool_raising_anything_ends_tool_error(raised: BaseException, face: str) -> None:
    """A tool raising a BaseException of its own, or an exception that cannot be printed,
    ends the run tool_error with a bounded message, never an escape."""

    @corral.tool(name="t.read", effect="read")
    def t(q: str = "") -> str:
        raise raised

    policy, store = ENFORCE, MemoryStore()  # a store of its own: no breaker state shared
    model = ScriptedModel([call("t.read"), final("d")])
    if face == "run":
        result = corral.run("x", model=model, tools=[t], policy=policy, store=store)
    elif face == "arun":
        result = asyncio.run(corral.arun("x", model=model, tools=[t], policy=policy, store=store))
    elif face == "Run.call":
        with corral.Run(policy, tools=[t], store=store) as run:
            run.call("t.read", {})
        result = run.result
    else:

        async def go() -> corral.RunResult:
            async with corral.AsyncRun(policy, tools=[t], store=store) as arun:
                await arun.call("t.read", {})
            return arun.result

        result = asyncio.run(go())
    assert result.stop_reason == "tool_error"
    assert result.stop is not None and type(raised).__name__ in result.stop.message


# -- property: generated hostile trees -------------------------------------------------------

_hostile_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**4400, max_value=10**4500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.text(max_size=8).map(OddStr),
    st.sampled_from([RaisingStr, RaisingEq, RaisingHash, StrNotStr]).map(lambda cls: cls()),
)
_key = st.one_of(st.text(max_size=4), st.integers(), st.none(), st.booleans(), st.floats())
_trees = st.recursive(
    _hostile_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_key, inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=_trees,
    depth=st.integers(min_value=0, max_value=3000),
    face=st.sampled_from(sorted(FACES)),
    policy_name=st.sampled_from(sorted(POLICIES)),
)
def test_any_generated_output_ends_with_a_stop_reason(
    tree: Any, depth: int, face: str, policy_name: str
) -> None:
    """Random trees of hostile leaves, wrapped up to 3,000 levels deep, through any face and
    policy: a stop reason from the closed list, never an exception; an observation the
    caller gets back is plain JSON."""
    value = tree
    for _ in range(depth):
        value = [value]
    result = FACES[face](POLICIES[policy_name], lambda: value)
    check_ends_well(result, policy_name)


@settings(max_examples=100, deadline=None)
@given(tree=_trees)
def test_an_accepted_output_is_returned_as_json(tree: Any) -> None:
    """Whatever the gateway accepts, it hands back as data that JSON writes and reads
    back unchanged (so it can be rendered for the model and replayed)."""
    with corral.Run(ENFORCE, tools=[reading(lambda: tree)], store=MemoryStore()) as run:
        out = run.call("t.read", {})
        run.finish("done")
    if run.result.stop_reason == "ok":
        assert json.loads(json.dumps(out, allow_nan=False)) == out
    else:
        assert run.result.stop_reason == "invalid_tool_output"
