"""Writes keyed by the call's identity: a deliberate repeat is a new write, a resumed call a
replay (marked as one), and loop detection that can hand the loop back to the model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import corral
from corral.testing import MemoryStore, ScriptedModel, call, final, turn

P = corral.Policy.from_dict


def pay_policy(**sections: Any) -> corral.Policy:
    """A policy allowing the write ``pay.send`` and the read ``search.read``."""
    tools = {"allow": ["pay.send", "search.read"], **sections.pop("tools", {})}
    writes = sections.pop("writes", {"require_approval": False})
    return P({"tools": tools, "writes": writes, **sections})


class Payments:
    """A write tool that records every payment its code really made."""

    def __init__(self) -> None:
        self.sent: list[int] = []

        @corral.tool(name="pay.send", effect="write")
        def pay(amount: int) -> str:
            self.sent.append(amount)
            return f"sent {amount} (#{len(self.sent)})"

        self.tool = pay


@corral.tool(name="search.read", effect="read")
def search(q: str) -> str:
    return f"results for {q}"


class Approver:
    """An in-process approver that approves everything and counts what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def __call__(self, request: corral.ApprovalRequest) -> bool:
        self.asked.append(dict(request.arguments))
        return True


def seen_by_model(model: ScriptedModel) -> list[str]:
    """Every tool observation the model was shown, in order."""
    last = model.requests[-1].messages
    return [str(m["content"]) for m in last if m.get("role") == "tool"]


def test_an_identical_write_in_a_later_turn_is_a_new_write_asked_for_again() -> None:
    """Two deliberate identical payments in two turns both run, each approved, none replayed."""
    pay, approver = Payments(), Approver()
    model = ScriptedModel([call("pay.send", amount=10), call("pay.send", amount=10), final("ok")])
    result = corral.run(
        "pay twice",
        model=model,
        tools=[pay.tool],
        policy=pay_policy(writes={"require_approval": True}),
        store="memory://",
        approver=approver,
    )
    assert result.stop_reason == "ok"
    assert pay.sent == [10, 10]
    assert approver.asked == [{"amount": 10}, {"amount": 10}]
    assert seen_by_model(model) == ["sent 10 (#1)", "sent 10 (#2)"]


def test_two_identical_writes_in_one_turn_are_two_writes() -> None:
    """Parallel identical calls in one turn are two calls: each has its own place in the turn."""
    pay = Payments()
    model = ScriptedModel(
        [turn(call("pay.send", amount=5), call("pay.send", amount=5)), final("ok")]
    )
    result = corral.run(
        "pay", model=model, tools=[pay.tool], policy=pay_policy(), store="memory://"
    )
    assert result.stop_reason == "ok" and pay.sent == [5, 5]


def test_a_resumed_loop_replays_the_write_it_made_and_says_so() -> None:
    """A run stopped after its write, resumed by id, replays that call: not paid twice, and
    the model is told the result is a replay."""
    store, pay = MemoryStore(), Payments()
    first = corral.run(
        "pay",
        model=ScriptedModel([call("pay.send", amount=7), final("done")]),
        tools=[pay.tool],
        policy=pay_policy(budgets={"max_steps": 1}),
        store=store,
    )
    assert first.stop_reason == "max_steps" and pay.sent == [7]
    model = ScriptedModel([call("pay.send", amount=7), final("done")])
    resumed = corral.run(
        "pay",
        model=model,
        tools=[pay.tool],
        policy=pay_policy(budgets={"max_steps": 5}),
        store=store,
        run_id=first.run_id,
    )
    assert resumed.stop_reason == "ok" and pay.sent == [7]
    [shown] = seen_by_model(model)
    assert shown.startswith("[replayed: this write already ran") and "NOT run again" in shown
    assert shown.endswith("sent 7 (#1)")
    assert resumed.usage.tool_calls == first.usage.tool_calls  # a replay costs nothing


def test_a_resumed_loop_that_chooses_another_write_runs_it() -> None:
    """Resumed at the same point with other arguments, the call is a new write, not a misuse."""
    store, pay = MemoryStore(), Payments()
    first = corral.run(
        "pay",
        model=ScriptedModel([call("pay.send", amount=7), final("done")]),
        tools=[pay.tool],
        policy=pay_policy(budgets={"max_steps": 1}),
        store=store,
    )
    resumed = corral.run(
        "pay",
        model=ScriptedModel([call("pay.send", amount=8), final("done")]),
        tools=[pay.tool],
        policy=pay_policy(budgets={"max_steps": 5}),
        store=store,
        run_id=first.run_id,
    )
    assert resumed.stop_reason == "ok" and pay.sent == [7, 8]


def test_run_call_keys_a_write_by_its_call_id() -> None:
    """``call_id``: a new id is a new write; the same id and arguments replay, marked so."""
    pay = Payments()
    policy = pay_policy(loops={"repeats": 5, "window": 5})
    with corral.Run(policy, tools=[pay.tool], store="memory://") as run:
        assert run.call("pay.send", {"amount": 1}, call_id="c1") == "sent 1 (#1)"
        assert run.last_call == corral.CallInfo(
            tool="pay.send", outcome="executed", idempotency_key=run.last_call.idempotency_key
        )
        assert run.call("pay.send", {"amount": 1}, call_id="c2") == "sent 1 (#2)"
        assert not run.last_call.replayed
        assert run.call("pay.send", {"amount": 1}, call_id="c1") == "sent 1 (#1)"
        assert run.last_call.replayed and run.last_call.outcome == "replayed"
        assert run.call("pay.send", {"amount": 2}, call_id="c1") == "sent 2 (#3)"
    assert pay.sent == [1, 1, 2]
    assert run.result.stop_reason == "ok" and run.result.usage.tool_calls == 3


def test_run_call_without_a_call_id_replays_an_identical_write_and_says_so() -> None:
    """With no key and no call id, an identical write in the same run is replayed (never
    run twice), and ``last_call`` tells the caller."""
    pay = Payments()
    with corral.Run(pay_policy(), tools=[pay.tool], store="memory://") as run:
        run.call("pay.send", {"amount": 3})
        assert run.last_call is not None and not run.last_call.replayed
        assert run.call("pay.send", {"amount": 3}) == "sent 3 (#1)"
        assert run.last_call.replayed and run.last_call.idempotency_key
    assert pay.sent == [3]


def test_last_call_says_when_a_read_came_from_the_cache() -> None:
    """An identical read within its TTL is served from the cache: ``outcome`` is ``cached``."""
    with corral.Run(pay_policy(), tools=[search], store="memory://") as run:
        assert run.last_call is None
        run.call("search.read", {"q": "x"})
        assert run.last_call.outcome == "executed" and run.last_call.idempotency_key is None
        run.call("search.read", {"q": "x"})
        assert run.last_call.outcome == "cached" and not run.last_call.replayed


def test_async_run_keys_writes_by_call_id_too() -> None:
    """``AsyncRun.call`` takes the same ``call_id`` and marks replays the same way."""
    pay = Payments()

    async def main() -> corral.AsyncRun:
        policy = pay_policy(loops={"repeats": 4, "window": 5})
        async with corral.AsyncRun(policy, tools=[pay.tool], store="memory://") as run:
            await run.call("pay.send", {"amount": 4}, call_id="a")
            await run.call("pay.send", {"amount": 4}, call_id="b")
            await run.call("pay.send", {"amount": 4}, call_id="a")
            assert run.last_call is not None and run.last_call.replayed
        return run

    run = asyncio.run(main())
    assert pay.sent == [4, 4] and run.result.stop_reason == "ok"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"call_id": 7}, "call_id must be a string, got int"),
        ({"call_id": b"x"}, "call_id must be a string, got bytes"),
        ({"idempotency_key": ["k"]}, "idempotency_key must be a string, got list"),
        ({"call_id": "x" * 513}, "call_id must be at most 512 characters, got 513"),
        ({"idempotency_key": "k" * 10_000}, "at most 512 characters, got 10000"),
    ],
)
def test_a_key_or_call_id_that_is_not_bounded_text_is_a_clear_error(
    kwargs: dict[str, Any], message: str
) -> None:
    """A key or call id of the wrong type or size is a developer mistake, said plainly."""
    pay = Payments()
    run = corral.Run(pay_policy(), tools=[pay.tool], store="memory://")
    with pytest.raises(corral.ConfigError, match=message):
        run.call("pay.send", {"amount": 1}, **kwargs)
    assert pay.sent == []


def test_a_loop_handed_back_to_the_model_is_not_run_and_then_stops() -> None:
    """``loops.on_detected: tell_model``: the looping call is refused and the model told;
    past ``tools.max_invalid_args`` the run stops with ``loop_detected``."""
    calls: list[str] = []

    @corral.tool(name="search.read", effect="read")
    def counted(q: str) -> str:
        calls.append(q)
        return f"results for {q}"

    model = ScriptedModel([call("search.read", q="same")], repeat_last=True)
    result = corral.run(
        "loop",
        model=model,
        tools=[counted],
        policy=pay_policy(
            loops={"on_detected": "tell_model"},
            tools={"max_invalid_args": 2, "specs": {"search.read": {"cache": False}}},
        ),
        store="memory://",
    )
    assert result.stop_reason == "loop_detected"
    assert calls == ["same", "same"]  # the third and later identical calls never ran
    shown = seen_by_model(model)
    assert shown[:2] == ["results for same", "results for same"]
    assert shown[2].startswith("ERROR: search.read was called 3 times with the same arguments")
    assert shown[3].startswith("ERROR: search.read was called 4 times with the same arguments")
    assert all("it was not run again" in s for s in shown[2:])


def test_run_call_hands_a_loop_back_as_tool_rejected() -> None:
    """In your own loop, a detected loop under ``tell_model`` is a ``ToolRejected``."""
    policy = pay_policy(loops={"on_detected": "tell_model"}, tools={"max_invalid_args": 1})
    with corral.Run(policy, tools=[search], store="memory://") as run:
        run.call("search.read", {"q": "x"})
        run.call("search.read", {"q": "x"})
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("search.read", {"q": "x"})
        assert (rejected.value.reason, rejected.value.detail) == ("loop_detected", "loop_detected")
        with pytest.raises(corral.Stop) as stop:
            run.call("search.read", {"q": "x"})
    assert stop.value.reason == "loop_detected" and str(stop.value).startswith(
        "loop_detected:search.read"
    )
    assert run.result.stop_reason == "loop_detected"


def test_a_loop_stops_the_run_by_default() -> None:
    """``on_detected`` defaults to ``stop``: the third identical call ends the run."""
    with corral.Run(pay_policy(), tools=[search], store="memory://") as run:
        for _ in range(3):
            run.call("search.read", {"q": "x"})
    assert str(run.result.stop) == "loop_detected:search.read (limit 3, would be 3)"
