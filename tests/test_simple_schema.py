"""Simple argument schemas certified without jsonschema: never valid where jsonschema says
invalid, and an invalid call still gets jsonschema's messages."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral._simple_schema import certifier
from corral.tools import executed_elsewhere

_TYPES = ["string", "integer", "number", "boolean", "null", "object", "array"]


def _schemas(depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.sampled_from(_TYPES).map(lambda t: {"type": t})
    enum = st.lists(
        st.one_of(st.text(max_size=3), st.integers(), st.booleans()), min_size=1, max_size=3
    ).map(lambda e: {"type": "string", "enum": e})
    odd = st.sampled_from(
        [
            {"type": "integer", "minimum": 0},
            {"type": "string", "format": "uri"},
            {"anyOf": [{"type": "string"}, {"type": "null"}]},
            {"type": ["string", "null"]},
            {"$ref": "#/$defs/x"},
        ]
    )
    if depth > 2:
        return st.one_of(leaf, enum, odd)
    sub = _schemas(depth + 1)

    def obj(
        props: dict[str, Any], req: list[str], extra: bool | None, title: str
    ) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if req:
            schema["required"] = req
        if extra is not None:
            schema["additionalProperties"] = extra
        if title:
            schema["title"] = title
        return schema

    objects = st.builds(
        obj,
        st.dictionaries(st.sampled_from("abcd"), sub, max_size=3),
        st.lists(st.sampled_from("abcde"), max_size=3, unique=True),
        st.one_of(st.none(), st.booleans()),
        st.text(max_size=3),
    )
    arrays = st.one_of(st.just({"type": "array"}), sub.map(lambda s: {"type": "array", "items": s}))
    return st.one_of(leaf, enum, odd, objects, arrays)


_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from("abcde"), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(max_examples=3000, deadline=None)
@given(_schemas(), _VALUES)
def test_a_certified_value_is_valid_for_jsonschema(schema: dict[str, Any], value: Any) -> None:
    """Whatever the schema and the value, the certifier never passes what jsonschema refuses."""
    check = certifier(schema)
    if check is not None and check(value):
        assert jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object"},
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"properties": {"q": {"type": "string"}}},
    ],
)
def test_a_schema_with_other_keywords_is_left_to_jsonschema(schema: dict[str, Any]) -> None:
    """Any keyword the certifier does not know (or no top-level type) gets no certifier."""
    assert certifier(schema) is None


def test_simple_tool_schemas_are_certified() -> None:
    """The shapes frameworks write from a signature are certified when the call is valid."""
    schema = {
        "type": "object",
        "title": "lookup_args",
        "properties": {
            "city": {"type": "string", "title": "City"},
            "days": {"type": "integer", "default": 1},
            "units": {"type": "string", "enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    check = certifier(schema)
    assert check is not None
    assert check({"city": "sf", "days": 3, "units": "c", "tags": ["a"]})
    assert not check({"city": "sf", "extra": 1})
    assert not check({"days": 3})
    assert not check({"city": "sf", "days": True})
    assert not check({"city": "sf", "units": "k"})


def test_an_invalid_call_gets_jsonschemas_messages() -> None:
    """A call the certifier does not pass is judged by jsonschema: same refusal as before."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    lookup = executed_elsewhere(
        "lookup", effect="read", effect_declared=True, description="", args_schema=schema,
        validate=True,
    )  # fmt: skip
    policy = corral.Policy.from_dict({"tools": {"allow": ["lookup"]}})
    with corral.Run(policy, tools=[lookup], store="memory://") as run:
        ticket = run.authorize("lookup", {"city": "sf"})
        assert run.report(ticket, "sunny") == "sunny"
        with pytest.raises(corral.ToolRejected) as refused:
            run.authorize("lookup", {"city": 3})
        assert "3 is not of type 'string'" in refused.value.message
        with pytest.raises(corral.ToolRejected) as refused:
            run.authorize("lookup", {"city": "sf", "days": 2})
        assert "Additional properties are not allowed" in refused.value.message


def test_a_tool_with_its_own_argument_checks_keeps_them() -> None:
    """A ``Tool`` subclass that checks its arguments its own way (replay's, which fills in
    the schema's defaults) is asked, not the certifier: what it returns is what runs."""

    class Defaulted(corral.Tool):
        def validate_args(self, args: Any) -> dict[str, Any]:
            checked = super().validate_args(args)
            checked.setdefault("days", 1)
            return checked

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
        "required": ["city"],
    }
    assert certifier(schema) is not None  # simple: a plain tool would skip jsonschema
    plain = executed_elsewhere(
        "lookup", effect="read", effect_declared=True, description="", args_schema=schema,
        validate=True,
    )  # fmt: skip
    own = Defaulted(**{f: getattr(plain, f) for f in plain.__dataclass_fields__})
    policy = corral.Policy.from_dict({"tools": {"allow": ["lookup"]}})
    with corral.Run(policy, tools=[own], store="memory://") as run:
        ticket = run.authorize("lookup", {"city": "sf"})
        assert dict(ticket.arguments) == {"city": "sf", "days": 1}
