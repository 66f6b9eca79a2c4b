"""Tool outputs that are not plain JSON (pydantic models, dataclasses, enums, dates, UUIDs,
Decimals, sets, named tuples) are made JSON as pydantic would; a structured output over the
cap is cut as JSON text unless it has an output schema; secrets are scrubbed before the cut."""

from __future__ import annotations

import datetime
import enum
import json
import string
import uuid
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import corral
from corral.testing import MemoryStore, ScriptedModel, call, final

P = corral.Policy.from_dict


class Colour(enum.Enum):
    RED = "red"


class Ticket(BaseModel):
    id: int
    opened: datetime.date
    price: Decimal
    colour: Colour


@dataclass
class Row:
    name: str
    tags: frozenset[str]
    at: datetime.datetime


Point = namedtuple("Point", "x y")
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def returning(value: Any, *, effect: str = "read", **options: Any) -> corral.Tool:
    """A tool ``t.read`` (or a write) returning ``value``."""
    name = "t.read" if effect == "read" else "t.write"
    return corral.tool(lambda q="": value, name=name, effect=effect, **options)


def policy(**spec: Any) -> corral.Policy:
    return P(
        {
            "tools": {"allow": ["t.read", "t.write"], "specs": {"t.read": spec, "t.write": spec}},
            "writes": {"require_approval": False},
        }
    )


def one_call(value: Any, **spec: Any) -> tuple[Any, corral.RunResult]:
    """The observation of one ``t.read`` call returning ``value``, and the run's result."""
    seen: list[Any] = []
    with corral.Run(policy(**spec), tools=[returning(value)], store=MemoryStore()) as run:
        seen.append(run.call("t.read", {}))
        run.finish("done")
    return (seen[0] if seen else None), run.result


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            Ticket(id=7, opened=datetime.date(2024, 5, 1), price=Decimal("9.50"), colour="red"),
            {"id": 7, "opened": "2024-05-01", "price": "9.50", "colour": "red"},
        ),
        (
            Row("a", frozenset({"x"}), datetime.datetime(2024, 5, 1, 12, 30)),
            {"name": "a", "tags": ["x"], "at": "2024-05-01T12:30:00"},
        ),
        (Colour.RED, "red"),
        (datetime.date(2024, 5, 1), "2024-05-01"),
        (datetime.time(9, 15), "09:15:00"),
        (datetime.timedelta(minutes=90), "PT1H30M"),
        (ID, "12345678-1234-5678-1234-567812345678"),
        (Decimal("1.50"), "1.50"),
        ({3, 1, 2}, [1, 2, 3]),
        (Point(1, 2), [1, 2]),
        (b"plain text", "plain text"),
        (
            {"rows": [Row("b", frozenset(), datetime.datetime(2024, 1, 1))], "n": Decimal(2)},
            {"rows": [{"name": "b", "tags": [], "at": "2024-01-01T00:00:00"}], "n": "2"},
        ),
        (
            {ID: 1, Colour.RED: 2, datetime.date(2024, 1, 1): 3, (1, 2): 4, 5: 6},
            {
                "12345678-1234-5678-1234-567812345678": 1,
                "red": 2,
                "2024-01-01": 3,
                "1,2": 4,
                "5": 6,
            },
        ),
    ],
    ids=[
        "model",
        "dataclass",
        "enum",
        "date",
        "time",
        "timedelta",
        "uuid",
        "decimal",
        "set",
        "namedtuple",
        "utf8 bytes",
        "nested",
        "keys",
    ],
)
def test_an_output_pydantic_can_serialise_is_handed_over_as_json(value, expected):
    """Models, dataclasses, enums, dates, UUIDs, Decimals, sets, named tuples and such keys
    reach the caller as the JSON pydantic writes for them, where they stopped the run."""
    observation, result = one_call(value)
    assert result.stop_reason == "ok", result.stop
    assert observation == expected
    assert json.loads(json.dumps(observation)) == observation


def test_the_model_reads_a_pydantic_output_as_its_json():
    """In the bounded loop the model is shown the model object's JSON text."""
    ticket = Ticket(id=7, opened=datetime.date(2024, 5, 1), price=Decimal("9.50"), colour="red")
    model = ScriptedModel([call("t.read"), final("done")])
    result = corral.run(
        "x", model=model, tools=[returning(ticket)], policy=policy(), store=MemoryStore()
    )
    assert result.stop_reason == "ok"
    shown = model.requests[-1].messages[-1]["content"]
    assert json.loads(shown) == {"id": 7, "opened": "2024-05-01", "price": "9.50", "colour": "red"}


def test_an_output_schema_validates_the_json_form():
    """A tool returning a pydantic model with that model's JSON Schema as output schema
    passes; a value whose JSON form breaks the schema is ``invalid_tool_output``."""
    ticket = Ticket(id=7, opened=datetime.date(2024, 5, 1), price=Decimal("9.50"), colour="red")
    schema = Ticket.model_json_schema(mode="serialization")
    observation, result = one_call(ticket, output_schema=schema)
    assert result.stop_reason == "ok" and observation["opened"] == "2024-05-01"
    strict = {"type": "object", "properties": {"price": {"type": "number"}}}
    _, result = one_call(ticket, output_schema=strict)
    assert result.stop_reason == "invalid_tool_output"
    assert result.stop.extra == {"problem": "schema"}


def test_a_write_returning_a_dataclass_replays_the_same_json():
    """A write's outcome is stored as the JSON form; the same key replays it unchanged."""
    runs = []

    def write(q: str = "") -> Row:
        runs.append(q)
        return Row("w", frozenset({"t"}), datetime.datetime(2024, 2, 2))

    tool = corral.tool(write, name="t.write", effect="write")
    with corral.Run(policy(), tools=[tool], store=MemoryStore()) as run:
        first = run.call("t.write", {}, idempotency_key="k1")
        again = run.call("t.write", {}, idempotency_key="k1")
        run.finish("done")
    assert first == again == {"name": "w", "tags": ["t"], "at": "2024-02-02T00:00:00"}
    assert len(runs) == 1


class Counted:
    """An iterator that records whether anything read it."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        self.read += 1
        return self.read


def test_an_iterator_is_refused_and_never_read():
    """A generator or iterator (which might never end) is ``invalid_tool_output``, and
    corral does not read a single item of it."""
    endless = Counted()
    _, result = one_call({"rows": endless})
    assert result.stop_reason == "invalid_tool_output"
    assert "iterator (Counted): return a list instead" in result.stop.message
    assert endless.read == 0


def test_an_unknown_object_is_still_invalid_tool_output():
    """What pydantic cannot serialise either stops the call, naming only its type."""

    class Opaque:
        def __repr__(self) -> str:
            return "Opaque(secret-ish)"

    _, result = one_call({"x": Opaque()})
    assert result.stop_reason == "invalid_tool_output"
    assert result.stop.message == "output is not JSON-serialisable: it holds a Opaque"


def test_only_what_the_cap_can_show_is_converted():
    """A huge list of dataclasses is cut as JSON text, and an iterator past the cap is
    never met, so never read."""
    endless = Counted()
    rows = [Row(str(i), frozenset(), datetime.datetime(2024, 1, 1)) for i in range(20_000)]
    observation, result = one_call([*rows, endless], max_output_chars=500)
    assert result.stop_reason == "ok"
    assert observation.startswith('[{"name": "0", "tags": [], "at": "2024-01-01T00:00:00"}')
    assert observation.endswith("more characters of JSON cut]") and len(observation) <= 500
    assert endless.read == 0


# -- over the cap: cut as text, or refused with a schema ------------------------------------

BIG = {"results": [{"title": f"result {i}", "url": f"https://e.example/{i}"} for i in range(50)]}


def test_a_structured_output_over_the_cap_without_a_schema_reaches_the_model_cut():
    """The loop goes on: the model reads the beginning of the JSON and a marker, and can
    answer from it."""
    model = ScriptedModel([call("t.read"), final("done")])
    result = corral.run(
        "x", model=model, tools=[returning(BIG)], policy=policy(max_output_chars=300),
        store=MemoryStore(),
    )  # fmt: skip
    assert result.stop_reason == "ok"
    shown = model.requests[-1].messages[-1]["content"]
    assert shown.startswith('{"results": [{"title": "result 0", "url": "https://e.example/0"}')
    assert len(shown) <= 300
    text = json.dumps(BIG)
    assert shown.endswith(f"\n[... {len(text) - len(shown.split(chr(10))[0])} more characters of"
                          " JSON cut]")  # fmt: skip


def test_a_structured_output_over_the_cap_with_a_schema_is_refused():
    """With an output schema (policy's or tool's) the run stops ``invalid_tool_output``
    (``output_too_large``); in observe mode the output is let through whole, recorded as
    the stop that would have happened."""
    schema = {"type": "object"}
    _, result = one_call(BIG, max_output_chars=300, output_schema=schema)
    assert result.stop_reason == "invalid_tool_output"
    assert result.stop.extra == {"problem": "output_too_large"}
    with corral.Run(
        policy(max_output_chars=300), tools=[returning(BIG, output_schema=schema)],
        store=MemoryStore(),
    ) as run:  # fmt: skip
        run.call("t.read", {})
    assert run.result.stop.extra == {"problem": "output_too_large"}
    observed = P({"mode": "observe", "tools": {"allow": ["t.read"], "specs": {"t.read": {
        "max_output_chars": 300, "output_schema": schema}}}})  # fmt: skip
    with corral.Run(observed, tools=[returning(BIG)], store=MemoryStore()) as run:
        assert run.call("t.read", {}) == BIG
        run.finish("done")
    assert [w.reason for w in run.result.would_stop] == ["invalid_tool_output"]


# -- secrets are scrubbed before the cut ----------------------------------------------------

SECRET_TOOL = "leak.read"


def leaking(output: Any) -> corral.Tool:
    def leak(ctx: corral.ToolContext) -> Any:
        return output(ctx.credentials["api_key"])

    return corral.tool(leak, name=SECRET_TOOL, effect="read", credentials=("api_key",))


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(string.ascii_letters + string.digits, min_size=6, max_size=40).map(
        lambda s: "Q" + s
    ),
    max_chars=st.integers(40, 400),
    offset=st.integers(-60, 60),
    whole=st.booleans(),
    wrap=st.sampled_from(["list", "dict", "dataclass"]),
)
def test_a_cut_structured_output_holds_no_secret_nor_its_beginning(
    secret, max_chars, offset, whole, wrap
):
    """A secret (or its first part) placed anywhere around the cap inside a structured
    output over the cap: the JSON text the model gets holds no whole secret and does not
    end, at the cut, with PARTIAL_SECRET characters (or half) of its beginning."""
    piece = secret if whole else secret[: max(1, len(secret) * 2 // 3)]
    lead = max(0, max_chars + offset)

    def output(s: str) -> Any:
        items = ["." * lead + piece + ",", "~" * 300]
        if wrap == "dict":
            return {"page": items}
        if wrap == "dataclass":
            return Row(items[0], frozenset({items[1]}), datetime.datetime(2024, 1, 1))
        return items

    spec = {"max_output_chars": max_chars}
    pol = P({"tools": {"allow": [SECRET_TOOL], "specs": {SECRET_TOOL: spec}}})
    with corral.Run(
        pol, tools=[leaking(output)], store=MemoryStore(),
        credentials={SECRET_TOOL: {"api_key": secret}},
    ) as run:  # fmt: skip
        observation = run.call(SECRET_TOOL, {})
    assert isinstance(observation, str) and len(observation) <= max_chars
    assert secret not in observation
    kept = observation.split("\n[... ")[0]
    least = min(8, (len(secret) + 1) // 2)
    for n in range(least, len(secret)):
        assert not kept.endswith(secret[:n]), (kept[-20:], n)
