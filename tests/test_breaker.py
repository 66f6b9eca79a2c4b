"""Degrade mode: circuit breakers shared through the store, and retry budgets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.stores.base import BreakerState
from corral.stores.sqlite import SQLiteStore
from corral.testing import ManualClock, MemoryStore


class Vendor:
    """A dependency that is down until told otherwise, counting the calls it receives."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def tool(self, retries: int = 0) -> corral.Tool:
        def browse(url: str) -> str:
            """Open a page."""
            with self.lock:
                self.calls += 1
            self.gate.wait(5)
            if not self.up:
                raise ConnectionError("vendor down")
            return "page"

        return corral.tool(browse, name="browser.open", effect="read", retries=retries)


def policy(**degrade: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["browser.open"], "specs": {"browser.open": {"cache": False}}},
            "degrade": {"window_seconds": 600, "cool_down_seconds": 30, **degrade},
        }
    )


def one_run(
    pol: corral.Policy, store: Any, tool: corral.Tool, clock: ManualClock, url: str = "https://x/1"
) -> corral.RunResult:
    with corral.Run(pol, tools=[tool], store=store, clock=clock) as run:
        run.call("browser.open", {"url": url})
    return run.result


def test_failures_open_the_breaker_and_later_runs_are_told_the_tool_is_down() -> None:
    """After min_calls failures, the next run's call is refused before reaching the vendor."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol = policy(min_calls=3)
    for i in range(3):
        assert (
            one_run(pol, store, vendor.tool(), clock, f"https://x/{i}").stop_reason == "tool_error"
        )
    assert store.breaker("browser.open", now=clock.monotonic()).state == "open"
    with corral.Run(pol, tools=[vendor.tool()], store=store, clock=clock) as run:
        assert run.tool_specs("neutral") == []  # left out of the tools offered
        with pytest.raises(corral.ToolRejected) as told:
            run.call("browser.open", {"url": "https://x/9"})
        run.finish("the browser is unavailable")
    assert told.value.reason == "dependency_degraded"
    assert vendor.calls == 3
    assert run.result.stop_reason == "ok"


def test_on_degraded_stop_ends_the_run_with_retry_after() -> None:
    """With `on_degraded: stop` the run stops with dependency_degraded and when to retry."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol = policy(min_calls=2, on_degraded="stop")
    for i in range(2):
        one_run(pol, store, vendor.tool(), clock, f"https://x/{i}")
    clock.advance(10)
    result = one_run(pol, store, vendor.tool(), clock)
    assert result.stop_reason == "dependency_degraded"
    assert result.stop is not None and result.stop.retry_after == pytest.approx(20)


def test_after_the_cool_down_one_probe_decides() -> None:
    """Half-open lets exactly one call through: success closes the breaker for everyone."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol = policy(min_calls=2)
    for i in range(2):
        one_run(pol, store, vendor.tool(), clock, f"https://x/{i}")
    clock.advance(31)
    vendor.up = True
    vendor.gate.clear()  # the probe hangs until every other caller has been answered
    results: list[str] = []

    def probe_or_not(i: int) -> None:
        try:
            with corral.Run(pol, tools=[vendor.tool()], store=store, clock=clock) as run:
                run.call("browser.open", {"url": f"https://y/{i}"})
                results.append("ran")
        except corral.ToolRejected:
            results.append("refused")

    before = vendor.calls
    threads = [threading.Thread(target=probe_or_not, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for _ in range(500):
        if results.count("refused") == 7:
            break
        threading.Event().wait(0.01)
    vendor.gate.set()
    for t in threads:
        t.join()
    assert vendor.calls - before == 1 and results.count("ran") == 1
    assert store.breaker("browser.open", now=clock.monotonic()).state == "closed"
    assert one_run(pol, store, vendor.tool(), clock, "https://z/1").stop_reason == "ok"


def test_a_failed_probe_opens_the_breaker_again() -> None:
    """A probe that fails starts a new cool-down."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol = policy(min_calls=2)
    for i in range(2):
        one_run(pol, store, vendor.tool(), clock, f"https://x/{i}")
    clock.advance(31)
    assert one_run(pol, store, vendor.tool(retries=3), clock).stop_reason == "tool_error"
    state = store.breaker("browser.open", now=clock.monotonic())
    assert state.state == "open" and state.until == pytest.approx(clock.monotonic() + 30)
    assert vendor.calls == 3  # the probe was not retried


def test_a_probe_that_never_reports_reopens_the_breaker_for_another_try() -> None:
    """A probe whose process died holds its claim; once its lease lapses the breaker opens for
    another cool-down, after which a new probe goes through and closes it."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol = policy(min_calls=2)
    for i in range(2):
        one_run(pol, store, vendor.tool(), clock, f"https://x/{i}")
    clock.advance(31)
    until = store.breaker("browser.open", now=clock.monotonic()).until
    lost = store.claim(
        f"breaker-probe:browser.open:{until!r}", "probe", tenant=None,
        now=clock.monotonic(), lease=30,
    )  # fmt: skip
    assert lost.status == "claimed"  # taken by a process that then died
    vendor.up = True

    def refused() -> bool:
        with corral.Run(pol, tools=[vendor.tool()], store=store, clock=clock) as run:
            try:
                run.call("browser.open", {"url": "https://y/1"})
            except corral.ToolRejected as told:
                run.finish("unavailable")
                return told.reason == "dependency_degraded"
        return False

    assert refused()  # half-open, but the probe is (still) claimed
    clock.advance(31)  # the lost probe's lease lapses: the breaker opens again
    assert refused()
    assert store.breaker("browser.open", now=clock.monotonic()).state == "open"
    assert vendor.calls == 2
    clock.advance(31)
    with corral.Run(pol, tools=[vendor.tool()], store=store, clock=clock) as run:
        assert run.call("browser.open", {"url": "https://y/3"}) == "page"  # the new probe
    assert store.breaker("browser.open", now=clock.monotonic()).state == "closed"
    assert vendor.calls == 3


def test_the_breaker_saves_calls_during_an_outage() -> None:
    """50 runs against a down vendor: without a breaker every run calls it; with one, few do."""

    def outage(pol: corral.Policy) -> int:
        vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
        for i in range(50):
            with corral.Run(pol, tools=[vendor.tool()], store=store, clock=clock) as run:
                try:
                    run.call("browser.open", {"url": f"https://x/{i}"})
                except corral.ToolRejected:
                    run.finish("unavailable")
            clock.advance(1)
        return vendor.calls

    without = outage(policy(min_calls=10**6))
    with_breaker = outage(policy(min_calls=5))
    print(f"vendor calls during the outage: {without} without a breaker, {with_breaker} with")
    assert without == 50
    assert with_breaker <= 7  # five to trip it, then one probe per cool-down


def test_the_retry_budget_caps_retries_at_a_share_of_calls() -> None:
    """Retries stay within ratio x calls + floor, whatever each tool's own `retries` says."""

    def outage(pol: corral.Policy) -> int:
        vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
        for i in range(20):
            one_run(pol, store, vendor.tool(retries=4), clock, f"https://x/{i}")
        return vendor.calls

    unbudgeted = outage(policy(min_calls=10**6, retry_budget_ratio=1.0, retry_budget_floor=10**6))
    budgeted = outage(policy(min_calls=10**6))  # defaults: 20% of calls + 3
    print(f"attempts for 20 failing calls: {unbudgeted} without a retry budget, {budgeted} with")
    assert unbudgeted == 100
    first_attempts = 20
    retries = budgeted - first_attempts
    assert retries <= 0.2 * budgeted + 3


def test_breaker_state_is_shared_through_a_durable_store(tmp_path: Path) -> None:
    """A breaker opened through one SQLite store object is seen through another."""
    from corral.stores.sqlite import SQLiteStore

    path = tmp_path / "shared.db"
    vendor, clock = Vendor(), ManualClock()
    pol = policy(min_calls=2)
    with SQLiteStore(path) as a, SQLiteStore(path) as b:
        for i in range(2):
            one_run(pol, a, vendor.tool(), clock, f"https://x/{i}")
        with (
            corral.Run(pol, tools=[vendor.tool()], store=b, clock=clock) as run,
            pytest.raises(corral.ToolRejected),
        ):
            run.call("browser.open", {"url": "https://x/3"})
        assert vendor.calls == 2
        assert b.breaker("browser.open", now=clock.monotonic()) == BreakerState(
            state="open", until=clock.monotonic() + 30
        )


def test_a_breaker_another_process_opens_is_obeyed_within_the_refresh(tmp_path: Path) -> None:
    """On the real clock a closed breaker is read at most every REFRESH_SECONDS: one opened
    through another store object (another process) is obeyed within that, never later; one
    this process opens is obeyed at once."""
    from corral.controls import breaker

    path = tmp_path / "shared.db"
    calls: list[str] = []

    @corral.tool(name="browser.open", effect="read")
    def browse(url: str) -> str:
        calls.append(url)
        return "page"

    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["browser.open"], "specs": {"browser.open": {"cache": False}}},
            "budgets": {"max_tool_calls": 10**6, "max_steps": 10**6, "max_seconds": 60},
            "degrade": {"on_degraded": "stop"},
        }
    )
    with SQLiteStore(path) as a, SQLiteStore(path) as b:
        with corral.Run(pol, tools=[browse], store=a) as run:
            run.call("browser.open", {"url": "https://x/1"})  # read closed, kept
            b.set_breaker("browser.open", BreakerState(state="open", until=time.time() + 60))
            opened = time.monotonic()
            with pytest.raises(corral.Stop) as stopped:
                for i in range(10**6):
                    run.call("browser.open", {"url": f"https://x/{i + 2}"})
            seen = time.monotonic() - opened
        assert stopped.value.info.reason == "dependency_degraded"
        assert seen < breaker.REFRESH_SECONDS + 0.5
        served = len(calls)
        b.set_breaker("browser.open", BreakerState())
        # This process's own trip: obeyed by its next call, with no wait.
        states = corral.Services().breakers
        with corral.Run(pol, tools=[browse], store=a) as run:
            run.call("browser.open", {"url": "https://y/1"})
            assert "browser.open" in states.of(a)
            core = run._core
            breaker._set(core, "browser.open", BreakerState(state="open", until=time.time() + 60))
            with pytest.raises(corral.Stop):
                run.call("browser.open", {"url": "https://y/2"})
        assert len(calls) == served + 1


def test_a_failing_model_endpoint_opens_its_breaker_and_no_request_is_sent() -> None:
    """Model endpoint failures open its breaker; the next run stops before any request."""
    from corral.testing import ScriptedModel, error

    store, clock = MemoryStore(), ManualClock()
    pol = policy(min_calls=2, on_degraded="stop")
    for _ in range(2):
        failing = ScriptedModel([error()], name="gpt-x")
        result = corral.run("t", model=failing, policy=pol, store=store, clock=clock)
        assert result.stop_reason == "model_error"
    model = ScriptedModel([error()], name="gpt-x")
    result = corral.run("t", model=model, policy=pol, store=store, clock=clock)
    assert result.stop_reason == "dependency_degraded"
    assert str(result.stop) == "dependency_degraded:gpt-x"
    assert model.requests == []
    other = ScriptedModel([corral.testing.final("fine")], name="other-model")
    assert corral.run("t", model=other, policy=pol, store=store, clock=clock).stop_reason == "ok"


# -- several processes: one window, one retry budget ----------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    import corral

    path, runs, retries, degrade = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    calls = 0

    def browse(url: str) -> str:
        global calls
        calls += 1
        raise ConnectionError("vendor down")

    tool = corral.tool(browse, name="browser.open", effect="read", retries=retries)
    policy = corral.Policy.from_dict({
        "tools": {"allow": ["browser.open"], "specs": {"browser.open": {"cache": False}}},
        "degrade": json.loads(degrade),
    })
    store = corral.open_store("sqlite:///" + path)
    refused = 0
    for i in range(runs):
        with corral.Run(policy, tools=[tool], store=store) as run:
            try:
                run.call("browser.open", {"url": f"https://x/{i}"})
            except corral.ToolRejected:
                refused += 1
                run.finish("unavailable")
    store.close()
    print(json.dumps({"vendor_calls": calls, "refused": refused}))
    """
)


def fleet(path: Path, *, processes: int, runs: int, retries: int = 0, **degrade: Any) -> list[Any]:
    """``processes`` processes at once on one SQLite file, each making ``runs`` runs of one
    call to a vendor that is down; what each saw."""
    # A day-long window: a test never straddles two buckets in practice.
    settings = json.dumps({"window_seconds": 86400, "cool_down_seconds": 300, **degrade})
    SQLiteStore(path).close()  # the schema, before the children race to create it
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(runs), str(retries), settings],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    out = []
    for child in children:
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def test_two_processes_trip_the_breaker_on_their_combined_failure_rate(tmp_path: Path) -> None:
    """10 failures each, min_calls 12: alone a process never trips it; together they do at 12."""
    alone = fleet(tmp_path / "alone.db", processes=1, runs=10, min_calls=12)
    with SQLiteStore(tmp_path / "alone.db") as store:
        assert store.breaker("browser.open", now=time.time()).state == "closed"
    unguarded = fleet(tmp_path / "off.db", processes=2, runs=10, min_calls=10**6)
    shared = fleet(tmp_path / "shared.db", processes=2, runs=10, min_calls=12)
    without = sum(c["vendor_calls"] for c in unguarded)
    together = sum(c["vendor_calls"] for c in shared)
    print(
        f"\nvendor calls, 2 processes x 10 runs against a down vendor: {without} without a "
        f"breaker, {together} with the shared one (one process alone: "
        f"{alone[0]['vendor_calls']}, never tripped)"
    )
    assert alone[0]["vendor_calls"] == 10 and without == 20
    assert 12 <= together <= 13  # 12 trip it; the other process may have one call in flight
    assert sum(c["refused"] for c in shared) == 20 - together
    with SQLiteStore(tmp_path / "shared.db") as store:
        assert store.breaker("browser.open", now=time.time()).state == "open"


def test_two_processes_share_one_retry_budget(tmp_path: Path) -> None:
    """2 processes x 10 failing calls with 4 retries each: the shared budget (20% + 3) allows
    8 retries in all, fewer than two budgets of their own would (6 each)."""
    off = {"min_calls": 10**6}
    unbudgeted = fleet(
        tmp_path / "off.db", processes=2, runs=10, retries=4,
        retry_budget_ratio=1.0, retry_budget_floor=10**6, **off,
    )  # fmt: skip
    budgeted = fleet(tmp_path / "shared.db", processes=2, runs=10, retries=4, **off)
    without = sum(c["vendor_calls"] for c in unbudgeted)
    attempts = sum(c["vendor_calls"] for c in budgeted)
    retries = attempts - 20
    print(
        f"\nattempts, 2 processes x 10 failing calls with retries=4: {without} without a retry "
        f"budget, {attempts} with the shared one ({retries} retries; two separate budgets "
        "would allow 12)"
    )
    assert without == 100
    assert retries <= 0.2 * attempts + 3  # one budget for the fleet: at most 8 retries
    assert retries == 8


# -- dependencies: one breaker for the tools (or models) of one vendor -------------------------


def vendor_policy(dependency: str | None = "portal.vendor.example") -> corral.Policy:
    """Two browser tools of one vendor (sharing ``dependency``) and an unrelated read."""
    spec: dict[str, Any] = {"cache": False}
    if dependency is not None:
        spec["dependency"] = dependency
    return corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["portal.orders", "portal.invoices", "kb.read"],
                "specs": {"portal.orders": spec, "portal.invoices": spec},
            },
            "degrade": {"min_calls": 3, "window_seconds": 600, "cool_down_seconds": 30},
        }
    )


def vendor_tools(vendor: Vendor) -> list[corral.Tool]:
    def orders(q: str) -> str:
        vendor.calls += 1
        raise ConnectionError("vendor down")

    def invoices(q: str) -> str:
        vendor.calls += 1
        return "invoice"

    def kb(q: str) -> str:
        return "notes"

    return [
        corral.tool(orders, name="portal.orders", effect="read"),
        corral.tool(invoices, name="portal.invoices", effect="read"),
        corral.tool(kb, name="kb.read", effect="read"),
    ]


def test_tools_sharing_a_dependency_are_degraded_together() -> None:
    """Failures of one tool open the breaker of its ``dependency``: every tool of that vendor
    is refused and left out of the tools offered; a tool of another dependency is not."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol, tools = vendor_policy(), vendor_tools(vendor)
    for i in range(3):
        with corral.Run(pol, tools=tools, store=store, clock=clock) as run:
            run.call("portal.orders", {"q": str(i)})
        assert run.result.stop_reason == "tool_error"
    assert store.breaker("portal.vendor.example", now=clock.monotonic()).state == "open"
    assert store.breaker("portal.orders", now=clock.monotonic()).state == "closed"
    with corral.Run(pol, tools=tools, store=store, clock=clock) as run:
        assert [s["name"] for s in run.tool_specs("neutral")] == ["kb.read"]
        with pytest.raises(corral.ToolRejected) as told:
            run.call("portal.invoices", {"q": "x"})
        assert run.call("kb.read", {"q": "x"}) == "notes"
        run.finish("later")
    assert told.value.reason == "dependency_degraded"
    assert vendor.calls == 3  # the healthy-looking sibling was not called either


def test_without_a_dependency_each_tool_has_its_own_breaker() -> None:
    """With no ``dependency`` the breaker is the tool's own: a sibling stays available."""
    vendor, store, clock = Vendor(), MemoryStore(), ManualClock()
    pol, tools = vendor_policy(None), vendor_tools(vendor)
    for i in range(3):
        with corral.Run(pol, tools=tools, store=store, clock=clock) as run:
            run.call("portal.orders", {"q": str(i)})
    with corral.Run(pol, tools=tools, store=store, clock=clock) as run:
        assert run.call("portal.invoices", {"q": "x"}) == "invoice"


def test_models_sharing_a_dependency_share_one_breaker() -> None:
    """A model object's ``dependency`` names its endpoint's breaker: a failing model opens it,
    and another model on that endpoint is refused before any request is sent."""
    store, clock = MemoryStore(), ManualClock()
    pol = corral.Policy.from_dict({"degrade": {"min_calls": 2, "cool_down_seconds": 30}})
    failing = corral.testing.ScriptedModel(
        [corral.testing.error(ConnectionError("503"))], repeat_last=True, name="m-small"
    )
    failing.dependency = "api.models.example"  # type: ignore[attr-defined]
    for _ in range(2):
        assert corral.run("t", model=failing, policy=pol, store=store, clock=clock).stop_reason == (
            "model_error"
        )
    other = corral.testing.ScriptedModel([corral.testing.final("hi")], name="m-large")
    other.dependency = "api.models.example"  # type: ignore[attr-defined]
    result = corral.run("t", model=other, policy=pol, store=store, clock=clock)
    assert result.stop_reason == "dependency_degraded" and other.requests == []
    alone = corral.testing.ScriptedModel([corral.testing.final("hi")], name="m-large")
    assert corral.run("t", model=alone, policy=pol, store=store, clock=clock).stop_reason == "ok"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 201, "émoji", 7, "a\nb"])
def test_a_dependency_name_is_checked(bad: Any) -> None:
    """A dependency name that is empty, too long or not plain ASCII is one clear problem."""
    with pytest.raises(corral.PolicyError) as problem:
        corral.Policy.from_dict(
            {"tools": {"allow": ["a.b"], "specs": {"a.b": {"dependency": bad}}}}
        )
    [line] = problem.value.problems
    assert line.startswith("tools.specs.a.b.dependency:")


def test_the_tools_on_offer_follow_a_breaker_another_process_opens(tmp_path: Path) -> None:
    """The tools on offer read a tool's breaker as the degrade guard does: one read closed is
    taken as closed for REFRESH_SECONDS on a shared store, then read again; a half-open one
    is read every time."""
    from corral.controls.breaker import REFRESH_SECONDS

    @corral.tool(name="browser.open", effect="read")
    def browse(url: str) -> str:
        return "page"

    pol = corral.Policy.from_dict({"tools": {"allow": ["browser.open"]}})
    path = tmp_path / "shared.db"
    with (
        SQLiteStore(path) as store,
        SQLiteStore(path) as other,
        corral.Run(pol, tools=[browse], store=store) as run,
    ):
        assert [s["name"] for s in run.tool_specs("neutral")] == ["browser.open"]
        other.set_breaker("browser.open", BreakerState(state="open", until=time.time() + 60))
        time.sleep(REFRESH_SECONDS + 0.05)
        assert run.tool_specs("neutral") == []  # read again: degraded, not offered
        other.set_breaker("browser.open", BreakerState(state="half_open", until=time.time() - 1))
        assert [s["name"] for s in run.tool_specs("neutral")] == ["browser.open"]
        other.set_breaker("browser.open", BreakerState(state="open", until=time.time() + 60))
        assert run.tool_specs("neutral") == []  # half-open was not kept as closed
