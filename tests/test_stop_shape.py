"""One shape for every stop: ``detail`` is the subject (tool, model or scope), ``extra["why"]``
the sub-reason, and the text one line: ``tool_denied:fetch.get (argument_not_allowed: host x)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.testing import ScriptedModel, Turn, call, final, raw_call, truncated

P = corral.Policy.from_dict


@corral.tool(name="fetch.get", effect="read")
def fetch(url: str) -> str:
    return "page"


@corral.tool(name="pay.send", effect="write")
def pay(order: str, note: str = "") -> str:
    return f"paid {order}"


@corral.tool(name="browser.open", effect="read")
def browser(url: str) -> str:
    return "opened"


POLICY = P(
    {
        "tools": {
            "allow": ["fetch.get", "pay.send"],
            "max_invalid_args": 0,
            "specs": {
                "fetch.get": {
                    "constraints": {"url": {"schemes": ["https"], "hosts": ["docs.example.com"]}}
                }
            },
        },
        "writes": {"require_approval": False},
        "budgets": {"max_usd": 5},
    }
)
TOOLS = [fetch, pay, browser]


def in_run(action: Callable[[corral.Run], Any]) -> corral.StopInfo:
    """The stop a ``Run`` ends with after ``action``."""
    with corral.Run(POLICY, tools=TOOLS, store="memory://") as run:
        action(run)
    assert run.result.stop is not None
    return run.result.stop


def in_loop(*turns: Any, unpriced: bool = False) -> corral.StopInfo:
    """The stop ``corral.run`` ends with for a scripted model (free unless ``unpriced``)."""
    script = [*turns, final("done")]
    model = (
        ScriptedModel(script, price=None, name="m1")
        if unpriced
        else ScriptedModel(script, name="m1")
    )
    result = corral.run("t", model=model, tools=TOOLS, policy=POLICY, store="memory://")
    assert result.stop is not None
    return result.stop


def mismatch(run: corral.Run) -> None:
    run.call("pay.send", {"order": "A"}, idempotency_key="k")
    run.call("pay.send", {"order": "B"}, idempotency_key="k")


CASES: list[tuple[str, Callable[[], corral.StopInfo], str, str | None, str]] = [
    (
        "not_allowed",
        lambda: in_run(lambda r: r.call("browser.open", {"url": "x"})),
        "browser.open",
        "not_allowed",
        "tool_denied:browser.open",
    ),
    (
        "unknown_tool",
        lambda: in_run(lambda r: r.call("made.up", {})),
        "made.up",
        "unknown_tool",
        "tool_denied:made.up (unknown_tool)",
    ),
    (
        "argument_not_allowed",
        lambda: in_run(lambda r: r.call("fetch.get", {"url": "https://evil.com/x"})),
        "fetch.get",
        "argument_not_allowed",
        "tool_denied:fetch.get (argument_not_allowed: host evil.com)",
    ),
    (
        "argument_not_allowed in the loop",
        lambda: in_loop(call("fetch.get", url="ftp://docs.example.com/")),
        "fetch.get",
        "argument_not_allowed",
        "tool_denied:fetch.get (argument_not_allowed: scheme ftp)",
    ),
    (
        "idempotency_mismatch",
        lambda: in_run(mismatch),
        "pay.send",
        "idempotency_mismatch",
        "tool_denied:pay.send (idempotency_mismatch)",
    ),
    (
        "invalid arguments",
        lambda: in_loop(raw_call("fetch.get", "{not json")),
        "fetch.get",
        None,
        "invalid_tool_args:fetch.get",
    ),
    (
        "truncated model output",
        lambda: in_loop(truncated("half")),
        "m1",
        "truncated",
        "invalid_model_output:m1 (truncated)",
    ),
    (
        "unpriced model",
        lambda: in_loop(unpriced=True),
        "run",
        "unpriced_model",
        "max_usd:run (unpriced_model: m1)",
    ),
]


@pytest.mark.parametrize(
    ("make", "detail", "why", "text"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_every_stop_names_its_subject_in_detail_and_its_sub_reason_in_why(
    make: Callable[[], corral.StopInfo], detail: str, why: str | None, text: str
) -> None:
    """Each kind of refusal has ``detail`` = the subject and ``why`` = the sub-reason."""
    stop = make()
    assert (stop.detail, stop.why, str(stop)) == (detail, why, text)
    assert stop.to_dict()["text"] == text
    if why is not None:
        assert stop.extra["why"] == why


def test_a_denial_handed_back_and_left_uncaught_has_the_same_shape() -> None:
    """A ``ToolRejected`` leaving ``with Run`` stops the run in the same shape as a stop."""
    policy = P({"tools": {"allow": ["fetch.get"], "on_denied": "tell_model"}})
    with corral.Run(policy, tools=TOOLS, store="memory://") as run:
        run.call("browser.open", {"url": "x"})
    assert (run.result.stop.detail, run.result.stop.why) == ("browser.open", "not_allowed")
    assert str(run.result.stop) == "tool_denied:browser.open"


NAMES = st.one_of(
    st.text(max_size=300),
    st.none(),
    st.integers(),
    st.binary(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_any_name_a_model_invents_gives_a_one_line_printable_stop(name: Any) -> None:
    """Whatever a model sends as a tool name (any text, None, numbers, bytes, lists), the stop
    is ``tool_denied`` — or ``invalid_model_output`` for what is no usable name at all (not a
    string, empty, over 256 characters, holding NUL: see models.base.validate_response) —
    its detail one short printable ASCII line, and nothing ran."""
    bad = corral.ToolCallRequest(name=name, arguments={})
    model = ScriptedModel([Turn(calls=(bad,))], repeat_last=True)
    result = corral.run("t", model=model, tools=TOOLS, policy=POLICY, store="memory://")
    stop = result.stop
    assert stop is not None
    text = str(stop)
    assert "\n" not in text and text.isascii() and text.isprintable()
    assert len(stop.detail) <= 80
    usable = isinstance(name, str) and 0 < len(name) <= 256 and "\0" not in name
    if not usable:
        assert stop.reason == "invalid_model_output" and stop.detail == model.name
        return
    assert stop.reason == "tool_denied"
    if isinstance(name, str) and name in ("fetch.get", "pay.send"):
        return  # a real tool: denied for its arguments instead
    if name == "browser.open":
        assert stop.why == "not_allowed"
    else:
        assert stop.why == "unknown_tool"
        assert text == f"tool_denied:{stop.detail} (unknown_tool)"


def test_a_stop_has_a_message_like_a_rejection() -> None:
    """``Stop.message`` is the stop's words (as ``ToolRejected.message`` is): the same
    text the result's stop carries; ``""`` when the reason and detail say it all."""
    policy = P({"tools": {"allow": ["fetch.get"]}, "budgets": {"max_tool_calls": 1}})
    with corral.Run(policy, tools=[fetch], store="memory://") as run:
        run.call("fetch.get", {"url": "https://a.example"})
        with pytest.raises(corral.Stop) as stopped:
            run.call("fetch.get", {"url": "https://b.example"})
    stop = stopped.value
    assert stop.reason == "max_tool_calls"
    assert stop.message and stop.message == run.result.stop.message
    assert corral.Stop("tool_denied", "browser.open").message == ""
