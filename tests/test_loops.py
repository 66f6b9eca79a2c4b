"""Loop detection: N identical calls among the last K stop the run with ``loop_detected``."""

from __future__ import annotations

from typing import Any

import pytest

import corral
from corral.testing import MemoryStore, ScriptedModel, call, final


@corral.tool(name="search.read", effect="read")
def search(query: str) -> str:
    """Search."""
    return f"results for {query}"


def policy(**sections: Any) -> corral.Policy:
    return corral.Policy.from_dict({"tools": {"allow": ["search.read"]}, **sections})


def test_a_model_repeating_one_call_is_stopped_at_the_third_repeat() -> None:
    """Three identical calls among the last five (the default) stop the run."""
    model = ScriptedModel([call("search.read", query="vendor status")], repeat_last=True)
    result = corral.run("t", model=model, tools=[search], policy=policy(), store=MemoryStore())
    assert result.stop_reason == "loop_detected"
    assert str(result.stop) == "loop_detected:search.read (limit 3, would be 3)"
    assert result.usage.steps == 3
    assert result.usage.tool_calls == 1  # the repeats were served from the read cache


def test_varied_calls_are_not_a_loop() -> None:
    """Calls with different arguments never count as repeats."""
    model = ScriptedModel([call("search.read", query=f"q{i}") for i in range(8)] + [final("ok")])
    result = corral.run("t", model=model, tools=[search], policy=policy(), store=MemoryStore())
    assert result.stop_reason == "ok"


def test_repeats_outside_the_window_do_not_count() -> None:
    """Two identical calls, then enough other calls to push them out of the window, then more."""
    steps = [call("search.read", query="a"), call("search.read", query="a")]
    steps += [call("search.read", query=f"other{i}") for i in range(4)]
    steps += [call("search.read", query="a"), final("done")]
    model = ScriptedModel(steps)
    result = corral.run("t", model=model, tools=[search], policy=policy(), store=MemoryStore())
    assert result.stop_reason == "ok"


def test_the_window_and_repeats_come_from_the_policy() -> None:
    """`loops: {repeats: 2, window: 2}` stops at the first immediate repeat."""
    with corral.Run(
        policy(loops={"repeats": 2, "window": 2}), tools=[search], store=MemoryStore()
    ) as run:
        run.call("search.read", {"query": "x"})
        with pytest.raises(corral.Stop) as stop:
            run.call("search.read", {"query": "x"})
    assert stop.value.reason == "loop_detected"
    assert run.result.stop_reason == "loop_detected"


def test_observe_mode_records_the_loop_without_stopping() -> None:
    """In observe mode a detected loop is listed in would_stop and the run goes on."""
    with corral.Run(policy(mode="observe"), tools=[search], store=MemoryStore()) as run:
        for _ in range(3):
            run.call("search.read", {"query": "x"})
        run.finish("done")
    assert run.result.stop_reason == "ok"
    assert [w.reason for w in run.result.would_stop] == ["loop_detected"]


def test_bad_loop_settings_are_config_errors() -> None:
    """repeats must be at least 2 and at most the window."""
    with pytest.raises(corral.PolicyError, match="repeats must be at least 2"):
        policy(loops={"repeats": 1})
    with pytest.raises(corral.PolicyError, match=r"cannot be more than window"):
        policy(loops={"repeats": 6, "window": 5})
