"""Properties of the budget arithmetic: no sequence of reserve / settle / refund lets usage
pass a cap at a grant, actuals are recorded as given, and threads cannot race past a cap."""

from __future__ import annotations

import random
import threading
from dataclasses import fields
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.budgets.meter import Charge, Hold, Limits, Meter

DIMS = ("steps", "tool_calls", "input_tokens", "output_tokens", "usd")
LIMIT_OF = {
    "steps": "max_steps",
    "tool_calls": "max_tool_calls",
    "input_tokens": "max_input_tokens",
    "output_tokens": "max_output_tokens",
    "usd": "max_usd",
}

cents = st.integers(0, 300).map(lambda c: Decimal(c) / 100)

charges = st.builds(
    Charge,
    steps=st.integers(0, 3),
    tool_calls=st.integers(0, 3),
    input_tokens=st.integers(0, 500),
    output_tokens=st.integers(0, 500),
    usd=cents,
    tool=st.sampled_from([None, "a", "b"]),
)

limits = st.builds(
    Limits,
    max_steps=st.integers(1, 10),
    max_seconds=st.just(90.0),
    max_tool_calls=st.integers(1, 10),
    max_tokens=st.none() | st.integers(1, 2000),
    max_input_tokens=st.none() | st.integers(1, 1500),
    max_output_tokens=st.none() | st.integers(1, 1500),
    max_usd=st.none() | cents.map(lambda d: d + Decimal("0.01")),
    tool_caps=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(1, 5)).map(MappingProxyType),
)


def _total(meter: Meter) -> dict[str, Any]:
    """Committed plus held, per dimension, and per tool."""
    used, held = meter.usage(), meter.held()
    return {dim: getattr(used, dim) + getattr(held, dim) for dim in DIMS}


def _within(meter: Meter, lim: Limits, by_tool_held: dict[str, int]) -> list[str]:
    """The caps committed-plus-held usage is over (empty when within all)."""
    total = _total(meter)
    over = [
        dim for dim in DIMS if (cap := getattr(lim, LIMIT_OF[dim])) is not None and total[dim] > cap
    ]
    if (
        lim.max_tokens is not None
        and total["input_tokens"] + total["output_tokens"] > lim.max_tokens
    ):
        over.append("tokens")
    by_tool = meter.usage().tool_calls_by_tool
    for tool, cap in lim.tool_caps.items():
        if by_tool.get(tool, 0) + by_tool_held.get(tool, 0) > cap:
            over.append(f"tool/{tool}")
    return over


def _shrink(data: Any, charge: Charge, *, above: bool) -> Charge:
    """An actual amount for ``charge``: at most it, or (``above``) possibly more."""

    def amount(held: int) -> int:
        return data.draw(st.integers(0, held * 2 + 5 if above else held))

    usd_cents = int(charge.usd * 100)
    return Charge(
        steps=charge.steps,
        tool_calls=charge.tool_calls,
        input_tokens=amount(charge.input_tokens),
        output_tokens=amount(charge.output_tokens),
        usd=Decimal(amount(usd_cents)) / 100,
        tool=charge.tool,
    )


def _play(data: Any, lim: Limits, *, above: bool) -> tuple[Meter, dict[str, Any]]:
    """Run a drawn sequence of operations; check the grant invariant at every grant."""
    meter = Meter(lim)
    open_holds: list[Hold] = []
    held_by_tool: dict[str, int] = {}
    expected = {dim: Decimal(0) for dim in DIMS}
    overrun = {"input_tokens": 0, "output_tokens": 0, "usd": Decimal(0)}
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(["reserve", "reserve", "settle", "refund"]))
        if op == "reserve":
            charge = data.draw(charges)
            try:
                hold = meter.reserve(charge)
            except corral.Stop as stop:
                assert stop.reason in ("max_steps", "max_tool_calls", "max_tokens", "max_usd")
                assert stop.info.observed > stop.info.limit  # a refusal is never spurious
                continue
            open_holds.append(hold)
            if charge.tool and charge.tool_calls:
                held_by_tool[charge.tool] = held_by_tool.get(charge.tool, 0) + charge.tool_calls
            if not above:
                assert _within(meter, lim, held_by_tool) == [], "a grant passed a cap"
        elif open_holds:
            hold = open_holds.pop(data.draw(st.integers(0, len(open_holds) - 1)))
            if hold.charge.tool and hold.charge.tool_calls:
                held_by_tool[hold.charge.tool] -= hold.charge.tool_calls
            if op == "refund":
                meter.refund(hold)
                continue
            actual = _shrink(data, hold.charge, above=above)
            meter.settle(hold, actual)
            for dim in DIMS:
                expected[dim] += getattr(actual, dim)
            for dim in overrun:
                overrun[dim] += max(0, getattr(actual, dim) - getattr(hold.charge, dim))
    return meter, {"expected": expected, "overrun": overrun, "open": open_holds}


@settings(max_examples=150, deadline=None)
@given(lim=limits, data=st.data())
def test_no_sequence_of_reserve_settle_refund_lets_a_grant_pass_a_cap(lim: Limits, data: Any):
    """Actuals at most their holds: committed plus held stays within every cap at every grant."""
    meter, seen = _play(data, lim, above=False)
    for hold in seen["open"]:
        meter.refund(hold)
    assert _within(meter, lim, {}) == []
    used = meter.usage()
    assert {dim: getattr(used, dim) for dim in DIMS} == seen["expected"]
    assert meter.held() == Charge()


@settings(max_examples=150, deadline=None)
@given(lim=limits, data=st.data())
def test_actuals_above_the_hold_are_recorded_as_given_and_counted_as_overrun(
    lim: Limits, data: Any
):
    """Settling more than was held records the actual figure, and ``overrun`` counts the excess."""
    meter, seen = _play(data, lim, above=True)
    used = meter.usage()
    assert {dim: getattr(used, dim) for dim in DIMS} == seen["expected"]
    over = seen["overrun"]
    assert (meter.overrun.input_tokens, meter.overrun.output_tokens, meter.overrun.usd) == (
        over["input_tokens"],
        over["output_tokens"],
        over["usd"],
    )
    assert used.overrun_tokens == over["input_tokens"] + over["output_tokens"]
    assert used.overrun_usd == over["usd"]


@settings(max_examples=100, deadline=None)
@given(lim=limits, data=st.data())
def test_after_an_overrun_no_further_grant_passes_a_cap_it_asks_for(lim: Limits, data: Any):
    """Even once actuals went over, a new grant never takes a dimension it charges past its cap."""
    meter, _ = _play(data, lim, above=True)
    charge = data.draw(charges)
    before = _total(meter)
    try:
        meter.reserve(charge)
    except corral.Stop:
        return
    after = _total(meter)
    for dim in DIMS:
        cap = getattr(lim, LIMIT_OF[dim])
        if getattr(charge, dim) and cap is not None:
            assert after[dim] <= cap
        assert after[dim] - before[dim] == getattr(charge, dim)


def test_a_fit_check_holds_nothing():
    """``fits`` answers without reserving."""
    meter = Meter(Limits(max_tool_calls=1))
    assert meter.fits(Charge(tool_calls=1)) is None
    assert meter.fits(Charge(tool_calls=1)) is None
    meter.reserve(Charge(tool_calls=1))
    assert meter.fits(Charge(tool_calls=1)) is not None


def test_a_refund_after_a_settle_changes_nothing():
    """A hold is given back once: refunding a settled hold is a no-op, not a second credit."""
    meter = Meter(Limits(max_tool_calls=2))
    hold = meter.reserve(Charge(tool_calls=1))
    meter.settle(hold, Charge(tool_calls=1))
    meter.refund(hold)
    assert meter.usage().tool_calls == 1
    assert meter.held() == Charge()


def test_a_hold_cannot_be_settled_twice():
    """Settling the same hold again is an error, not a second charge."""
    meter = Meter(Limits(max_tool_calls=2))
    hold = meter.reserve(Charge(tool_calls=1))
    meter.settle(hold, Charge(tool_calls=1))
    with pytest.raises(corral.ConfigError, match="already settled"):
        meter.settle(hold, Charge(tool_calls=1))
    assert meter.usage().tool_calls == 1


def test_resumed_usage_counts_against_the_caps():
    """A meter started from earlier usage refuses what would pass the cap with it."""
    earlier = corral.Usage(
        tool_calls=4, usd=Decimal("0.90"), tool_calls_by_tool=MappingProxyType({"a": 2})
    )
    meter = Meter(
        Limits(max_tool_calls=5, max_usd=Decimal(1), tool_caps=MappingProxyType({"a": 2})),
        usage=earlier,
    )
    with pytest.raises(corral.Stop, match="max_tool_calls:tool/a"):
        meter.reserve(Charge(tool_calls=1, tool="a"))
    with pytest.raises(corral.Stop, match=r"max_usd:run \(limit 1.00, would be 1.10\)"):
        meter.reserve(Charge(tool_calls=1, usd=Decimal("0.20")))
    meter.reserve(Charge(tool_calls=1, usd=Decimal("0.10")))


# -- threads ------------------------------------------------------------------------------


def test_threads_reserving_against_one_meter_never_pass_the_cap():
    """32 threads racing to reserve: exactly the cap is granted, never one more."""
    meter = Meter(
        Limits(max_tool_calls=1000, max_usd=Decimal("7.00"), tool_caps=MappingProxyType({"a": 500}))
    )
    granted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(32)

    def worker() -> None:
        barrier.wait()
        mine = 0
        while True:
            try:
                hold = meter.reserve(Charge(tool_calls=1, usd=Decimal("0.10"), tool="a"))
            except corral.Stop:
                break
            total = meter.usage().usd + meter.held().usd
            assert total <= Decimal("7.00")
            meter.settle(hold, hold.charge)
            mine += 1
        with lock:
            granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 70
    usage = meter.usage()
    assert (usage.tool_calls, usage.usd, usage.tool_calls_by_tool["a"]) == (70, Decimal("7.00"), 70)
    assert meter.held() == Charge()


def test_threads_mixing_settles_and_refunds_keep_the_books_exact():
    """Concurrent reserve / settle / refund: committed equals what was settled, within the cap."""
    meter = Meter(Limits(max_tool_calls=10_000, max_steps=10_000, max_usd=Decimal("50")))
    settled: list[Decimal] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            cost = Decimal(rng.randint(0, 100)) / 100
            try:
                hold = meter.reserve(Charge(tool_calls=1, usd=cost))
            except corral.Stop:
                continue
            if rng.random() < 0.3:
                meter.refund(hold)
                continue
            actual = Decimal(rng.randint(0, int(cost * 100))) / 100
            meter.settle(hold, Charge(tool_calls=1, usd=actual))
            with lock:
                settled.append(actual)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = meter.usage()
    assert usage.usd == sum(settled, Decimal(0)) <= Decimal("50")
    assert usage.tool_calls == len(settled)
    assert meter.held() == Charge()


def test_every_charge_dimension_is_covered_by_these_properties():
    """The properties above name every field of ``Charge`` (a new one needs a property)."""
    assert {f.name for f in fields(Charge)} == {*DIMS, "tool"}
