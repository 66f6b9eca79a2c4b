"""Model outputs of every hostile shape end the turn with ``invalid_model_output`` or
``model_error``, through ``corral.run``, ``corral.arun`` and ``Run.model_turn``, and
never escape as an exception.

Shapes: a tool call named None, an int, bytes, 100,000 characters or holding NUL;
arguments that are no JSON, no object, nested 100,000 deep, 2 MB, holding bytes, NaN or
a 5,000-digit number; a text that is not a string; tool calls that are not a list;
token counts, model and finish reason of the wrong type; a respond() returning None or
a dict, raising a BaseException of its own or an exception that cannot be printed,
recursing without end. SystemExit is cancellation (re-raised).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.models.base import ModelResponse, ToolCallRequest
from corral.stops import STOP_REASONS
from corral.testing import MemoryStore

POLICY = corral.Policy.from_dict({"tools": {"allow": ["t.read"]}})


@corral.tool(name="t.read", effect="read")
def t(q: str = "") -> str:
    return "fact"


def deep_dict(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


class OddStr(str):
    def __len__(self) -> int:
        raise RuntimeError("no len")


class RaisingIter(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("no iter")


def tc(**fields: Any) -> ToolCallRequest:
    """A tool call of t.read, with ``fields`` replacing its own (no type checks)."""
    values: dict[str, Any] = {"name": "t.read", "arguments": {}, "id": "c1"}
    values.update(fields)
    return ToolCallRequest(**values)


def resp(**fields: Any) -> ModelResponse:
    return ModelResponse(**fields)


# What the turn should end with: "invalid" (invalid_model_output) or "ok" (usable: run on).
RESPONSES: dict[str, tuple[Any, str]] = {
    "name_none": (resp(tool_calls=[tc(name=None)]), "invalid"),
    "name_int": (resp(tool_calls=[tc(name=5)]), "invalid"),
    "name_bytes": (resp(tool_calls=[tc(name=b"t.read")]), "invalid"),
    "name_100k": (resp(tool_calls=[tc(name="a" * 100_000)]), "invalid"),
    "name_nul": (resp(tool_calls=[tc(name="t.read\x00")]), "invalid"),
    "name_empty": (resp(tool_calls=[tc(name="")]), "invalid"),
    "name_str_subclass": (resp(tool_calls=[tc(name=OddStr("t.read"))]), "ok"),
    "args_not_json_text": (resp(tool_calls=[tc(arguments="{not json")]), "ok"),
    "args_json_list_text": (resp(tool_calls=[tc(arguments="[1, 2]")]), "ok"),
    "args_list": (resp(tool_calls=[tc(arguments=[1, 2])]), "invalid"),
    "args_none": (resp(tool_calls=[tc(arguments=None)]), "invalid"),
    "args_deep": (resp(tool_calls=[tc(arguments=deep_dict(100_000))]), "invalid"),
    "args_deep_text": (
        resp(tool_calls=[tc(arguments='{"a":' * 100_000 + "1" + "}" * 100_000)]),
        "invalid",
    ),
    "args_2mb": (resp(tool_calls=[tc(arguments={"q": "x" * 2_000_000})]), "invalid"),
    "args_huge_int_text": (resp(tool_calls=[tc(arguments='{"q": ' + "1" * 5000 + "}")]), "ok"),
    "args_huge_int": (resp(tool_calls=[tc(arguments={"q": 10**5000})]), "invalid"),
    "args_bytes": (resp(tool_calls=[tc(arguments={"q": b"x"})]), "invalid"),
    "args_nan": (resp(tool_calls=[tc(arguments={"q": math.nan})]), "invalid"),
    "args_mixed_keys": (resp(tool_calls=[tc(arguments={1: "a", "q": "b"})]), "invalid"),
    "id_int": (resp(tool_calls=[tc(id=5)]), "invalid"),
    "text_int": (resp(text=5), "invalid"),
    "text_bytes": (resp(text=b"x"), "invalid"),
    "calls_str": (resp(tool_calls="t.read"), "invalid"),
    "calls_dict": (resp(tool_calls={"name": "t.read"}), "invalid"),
    "calls_generator": (resp(tool_calls=(c for c in [tc()])), "invalid"),
    "calls_list_subclass": (resp(tool_calls=RaisingIter([tc()])), "ok"),
    "calls_item_dict": (resp(tool_calls=[{"name": "t.read"}]), "invalid"),
    "calls_1000": (resp(tool_calls=[tc()] * 1000), "invalid"),
    # Token counts that cannot be right are usage, not output: model_error, why invalid_usage.
    "input_tokens_str": (resp(text="x", input_tokens="5"), "usage"),
    "output_tokens_float": (resp(text="x", output_tokens=1.5), "usage"),
    "output_tokens_none": (resp(text="x", output_tokens=None), "usage"),
    "input_tokens_bool": (resp(text="x", input_tokens=True), "usage"),
    "input_tokens_negative": (resp(text="x", input_tokens=-(10**9)), "usage"),
    "output_tokens_huge": (resp(text="x", output_tokens=10**5000), "usage"),
    "model_int": (resp(text="x", model=5), "invalid"),
    "finish_none": (resp(text="x", finish_reason=None), "invalid"),
    "returns_none": (None, "invalid"),
    "returns_dict": ({"text": "x"}, "invalid"),
}


class Boom(BaseException):
    """A BaseException of the model's own."""


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print")


def recurse(n: int = 0) -> int:
    return recurse(n + 1) + 1


RAISES: dict[str, Any] = {
    "base_exception": lambda: Boom("b"),
    "unprintable": Unprintable,
    "recursion": lambda: recurse(),
}


class Model:
    """Answers its first turn with ``first`` (or raises what ``raises`` gives), then "done"."""

    name = "m"

    def __init__(self, first: Any = None, raises: Any = None) -> None:
        self.first, self.raises, self.turns = first, raises, 0

    def respond(self, request: corral.ModelRequest) -> Any:
        self.turns += 1
        if self.turns > 1:
            return ModelResponse(text="done")
        if self.raises is not None:
            raise self.raises()
        return self.first


class AsyncModel(Model):
    async def respond(self, request: corral.ModelRequest) -> Any:  # type: ignore[override]
        return Model.respond(self, request)


def via_run(model: Any) -> corral.RunResult:
    return corral.run("x", model=model, tools=[t], policy=POLICY, store=MemoryStore())


def via_arun(model: Any) -> corral.RunResult:
    return asyncio.run(corral.arun("x", model=model, tools=[t], policy=POLICY, store=MemoryStore()))


def via_model_turn(model: Any) -> corral.RunResult:
    with corral.Run(POLICY, tools=[t], store=MemoryStore()) as run:
        response = run.model_turn(model, [{"role": "user", "content": "x"}])
        run.finish(response.text)
    return run.result


def via_async_model_turn(model: Any) -> corral.RunResult:
    async def go() -> corral.RunResult:
        async with corral.AsyncRun(POLICY, tools=[t], store=MemoryStore()) as run:
            response = await run.model_turn(model, [{"role": "user", "content": "x"}])
            await run.finish(response.text)
        return run.result

    return asyncio.run(go())


FACES = {
    "run": via_run,
    "arun": via_arun,
    "Run.model_turn": via_model_turn,
    "AsyncRun.model_turn": via_async_model_turn,
}


@pytest.mark.parametrize("face", sorted(FACES))
@pytest.mark.parametrize("shape", sorted(RESPONSES))
def test_a_hostile_response_ends_invalid_model_output(shape: str, face: str) -> None:
    """Each hostile response shape, from a sync or async model, through every face, ends
    invalid_model_output naming the model, model_error (why invalid_usage) for token counts
    that cannot be right, or is usable and the run goes on."""
    response, expected = RESPONSES[shape]
    for make in (Model, AsyncModel):
        result = FACES[face](make(response))
        assert result.stop_reason in STOP_REASONS
        if expected == "invalid":
            assert result.stop_reason == "invalid_model_output", result.stop
            assert result.stop is not None and result.stop.detail == "m"
            assert len(result.stop.message) < 1000
        elif expected == "usage":
            assert result.stop_reason == "model_error", result.stop
            assert result.stop is not None and result.stop.detail == "m"
            assert result.stop.extra == {"why": "invalid_usage"}
            assert len(result.stop.message) < 1000
        elif face in ("run", "arun"):
            # Usable: the loop runs the call (or hands the model its mistake) and goes on.
            assert result.stop_reason == "ok", result.stop


def test_a_tool_named_none_is_invalid_model_output() -> None:
    """The issue's example: a model naming tool None stops invalid_model_output, where it
    raised TypeError."""
    result = via_run(Model(resp(tool_calls=[tc(name=None)])))
    assert str(result.stop) == "invalid_model_output:m"
    assert result.stop is not None and "tool name must be a string" in result.stop.message


@pytest.mark.parametrize("face", sorted(FACES))
@pytest.mark.parametrize("raised", sorted(RAISES))
def test_a_model_raising_anything_ends_model_error(raised: str, face: str) -> None:
    """A respond() raising a BaseException of its own, an unprintable exception, or
    recursing without end ends model_error with a bounded message, never an escape."""
    for make in (Model, AsyncModel):
        result = FACES[face](make(raises=RAISES[raised]))
        assert result.stop_reason == "model_error", result.stop
        assert result.stop is not None and len(result.stop.message) < 1000


@pytest.mark.parametrize("face", sorted(FACES))
def test_system_exit_from_a_model_is_cancellation(face: str) -> None:
    """SystemExit is the process being asked to stop: the run is recorded cancelled and
    the exception goes on (as KeyboardInterrupt does)."""
    seen: list[corral.AsyncRun] = []

    def raise_exit() -> BaseException:
        return SystemExit(3)

    with pytest.raises(SystemExit):
        if face in ("run", "arun"):
            corral.run(
                "x",
                model=Model(raises=raise_exit),
                tools=[t],
                policy=POLICY,
                store=MemoryStore(),
                on_run=seen.append,
            )
        else:
            with corral.Run(POLICY, tools=[t], store=MemoryStore()) as run:
                run.model_turn(Model(raises=raise_exit), [{"role": "user", "content": "x"}])
    result = seen[0].result if seen else run.result
    assert result.stop_reason == "cancelled"


def test_an_invalid_response_settles_at_the_reservation() -> None:
    """A response that cannot be used was still a call whose usage is unknown: the worst
    case reserved for it stays charged, never a credit."""
    for response in (resp(text=5), resp(text="x", input_tokens="5")):
        result = via_run(Model(response))
        assert result.stop_reason in ("invalid_model_output", "model_error")
        assert result.usage.output_tokens > 0 and result.usage.input_tokens > 0


# -- property: generated responses ------------------------------------------------------------

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=4),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)
_names = st.one_of(_junk, st.sampled_from(["t.read", "nope.tool", "T.READ", "t.read\n"]))
_arguments = st.one_of(
    _junk,
    st.dictionaries(st.text(max_size=3), _junk, max_size=3),
    st.integers(min_value=0, max_value=3000).map(deep_dict),
    st.text(max_size=40).map(lambda s: '{"q": ' + s),
)
_calls = st.builds(
    lambda name, args, call_id: ToolCallRequest(name=name, arguments=args, id=call_id),
    _names,
    _arguments,
    st.one_of(st.text(max_size=8), st.none(), st.integers()),
)
_responses = st.one_of(
    _junk,
    st.builds(
        ModelResponse,
        text=st.one_of(st.none(), st.text(max_size=20), _junk),
        tool_calls=st.one_of(st.lists(_calls, max_size=3), st.tuples(_calls), _junk),
        input_tokens=st.one_of(st.integers(min_value=0, max_value=1000), _junk),
        output_tokens=st.one_of(st.integers(min_value=0, max_value=1000), _junk),
        model=st.one_of(st.text(max_size=5), _junk),
        finish_reason=st.one_of(st.sampled_from(["stop", "length", "tool_calls"]), _junk),
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(response=_responses, face=st.sampled_from(sorted(FACES)), is_async=st.booleans())
def test_any_generated_response_ends_with_a_stop_reason(
    response: Any, face: str, is_async: bool
) -> None:
    """Random responses of any structure and types, through any face: the run ends with a
    stop reason from the closed list, never an exception."""
    model = (AsyncModel if is_async else Model)(response)
    result = FACES[face](model)
    assert result.stop_reason in STOP_REASONS
