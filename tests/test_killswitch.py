"""The kill switch: modes × scopes through ``corral.Run``, model calls, the tools on offer,
the per-process cache, failing closed, and the delay before another process sees a switch."""

from __future__ import annotations

import asyncio
import queue
import random
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.controls import killswitch
from corral.controls.killswitch import KillSwitchCache
from corral.exceptions import ConfigError, StoreError
from corral.record import audit
from corral.stores.base import KillSwitchState
from corral.stores.memory import MemoryStore
from corral.stores.sqlite import SQLiteStore
from corral.testing import ScriptedModel, final
from crash import pg as crash_pg

TARGET = {"tenant": "acme", "agent": "support-bot", "run_id": "run_target"}
OTHER = {"tenant": "globex", "agent": "billing-bot"}
TARGETS = {"global": "", "tenant": "acme", "agent": "support-bot", "run": "run_target"}
TOOLS = ("kb.read", "crm.write", "browser.open")
#: What each mode blocks among the three tools: a read, a write, an expensive read.
BLOCKS = {
    "stop_all": set(TOOLS),
    "disable_writes": {"crm.write"},
    "disable_expensive": {"browser.open"},
}


def policy(mode: str = "disable_writes", **extra: Any) -> corral.Policy:
    """The three tools allowed, no approvals, large budgets; ``mode`` when a switch has none."""
    return corral.Policy.from_dict(
        {
            "tools": {"allow": list(TOOLS)},
            "writes": {"require_approval": False},
            "kill_switch": {"mode_when_enabled": mode},
            **extra,
        }
    )


Probe = Any  # conftest.Probe: a tool and the record of its calls


@pytest.fixture
def tools(probe: Callable[..., Probe]) -> dict[str, Probe]:
    """A read, a write and an expensive read, counting their calls."""
    return {
        "kb.read": probe("kb.read"),
        "crm.write": probe("crm.write", effect="write"),
        "browser.open": probe("browser.open", expensive=True),
    }


def outcomes(store: Any, tools: dict[str, Probe], pol: corral.Policy, **who: Any) -> dict[str, str]:
    """The stop reason of a run calling each tool once (one run per tool)."""
    seen = {}
    for name in TOOLS:
        with corral.Run(pol, tools=[p.tool for p in tools.values()], store=store, **who) as run:
            run.call(name, {"q": "x"})
        seen[name] = run.result.stop_reason
    return seen


def many_calls() -> corral.Policy:
    """kb.read allowed, budgets and loop detection out of the way of many calls."""
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"]},
            "budgets": {"max_tool_calls": 1000, "max_steps": 1000},
            "loops": {"repeats": 50, "window": 50},
        }
    )


def expected(blocked: set[str]) -> dict[str, str]:
    return {name: "kill_switch" if name in blocked else "ok" for name in TOOLS}


# -- modes × scopes ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", sorted(BLOCKS))
@pytest.mark.parametrize("scope", sorted(TARGETS))
def test_each_mode_blocks_its_tools_in_the_runs_its_scope_targets(
    scope: str, mode: str, tools: dict[str, Probe]
) -> None:
    """A switch blocks what its mode names, in the runs its scope targets, and nothing else."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope=scope, target=TARGETS[scope], mode=mode))  # type: ignore[arg-type]
    assert outcomes(store, tools, policy(), **TARGET) == expected(BLOCKS[mode])
    elsewhere = BLOCKS[mode] if scope == "global" else set()
    assert outcomes(store, tools, policy(), **OTHER) == expected(elsewhere)
    for name, p in tools.items():
        assert p.count == 2 - (name in BLOCKS[mode]) - (name in elsewhere), name


@pytest.mark.parametrize("mode", sorted(BLOCKS))
@pytest.mark.parametrize("target", TOOLS)
def test_a_tool_switch_applies_its_mode_to_that_tool_only(
    target: str, mode: str, tools: dict[str, Probe]
) -> None:
    """A tool-scoped switch blocks that tool when its mode covers it, in every run."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="tool", target=target, mode=mode))  # type: ignore[arg-type]
    blocked = {target} & BLOCKS[mode]
    assert outcomes(store, tools, policy(), **TARGET) == expected(blocked)
    assert outcomes(store, tools, policy(), **OTHER) == expected(blocked)


@pytest.mark.parametrize("default", sorted(BLOCKS))
@pytest.mark.parametrize("scope", [*sorted(TARGETS), "tool"])
def test_a_switch_without_a_mode_takes_the_runs_mode_when_enabled_in_every_scope(
    scope: str, default: str, tools: dict[str, Probe]
) -> None:
    """A mode-less switch of any scope (tool and run too) means the run's mode_when_enabled."""
    store = MemoryStore()
    target = "crm.write" if scope == "tool" else TARGETS[scope]
    store.set_kill_switch(KillSwitchState(scope=scope, target=target))  # type: ignore[arg-type]
    blocked = BLOCKS[default] & ({"crm.write"} if scope == "tool" else set(TOOLS))
    assert outcomes(store, tools, policy(default), **TARGET) == expected(blocked)


def test_runs_with_different_policies_read_one_mode_less_switch_their_own_way(
    tools: dict[str, Probe],
) -> None:
    """One global switch without a mode: a stop_all policy stops reads, a disable_writes one not."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="global"))
    assert outcomes(store, tools, policy("stop_all"))["kb.read"] == "kill_switch"
    assert outcomes(store, tools, policy("disable_writes"))["kb.read"] == "ok"


def test_the_stop_names_the_switch_its_mode_reason_and_who_set_it(tools: dict[str, Probe]) -> None:
    """The stop says kill_switch:<tool>, the switch's scope, mode, reason and who set it."""
    store = MemoryStore()
    killswitch.enable(
        store, scope="tenant", target="acme", mode="stop_all", reason="incident 42", actor="ops"
    )
    with corral.Run(policy(), tools=[tools["kb.read"].tool], store=store, tenant="acme") as run:
        run.call("kb.read", {"q": "x"})
    stop = run.result.stop
    assert stop is not None
    assert str(stop) == "kill_switch:kb.read"
    assert stop.scope == "tenant/acme"
    assert stop.message == "stop_all is on (tenant/acme): incident 42"
    assert stop.extra == {"mode": "stop_all", "set_by": "ops"}
    assert not stop.retryable


def test_an_unknown_tool_under_stop_all_is_refused_by_the_switch(tools: dict[str, Probe]) -> None:
    """stop_all refuses even a name nobody registered; other modes leave it to the registry."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="global", mode="disable_writes"))
    with corral.Run(policy(), tools=[tools["kb.read"].tool], store=store) as run:
        run.call("made.up", {})
    assert run.result.stop_reason == "tool_denied"
    store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
    with corral.Run(policy(), tools=[tools["kb.read"].tool], store=store) as run:
        run.call("made.up", {})
    assert str(run.result.stop) == "kill_switch:made.up"


def test_a_switch_set_during_an_approval_refuses_the_approved_write(
    tools: dict[str, Probe],
) -> None:
    """The switch is checked again after the approval: a write approved meanwhile never runs."""
    store = MemoryStore()

    def approver(request: Any) -> bool:
        store.set_kill_switch(KillSwitchState(scope="run", target=request.run_id))
        return True

    pol = corral.Policy.from_dict({"tools": {"allow": ["crm.write"]}})
    with corral.Run(pol, tools=[tools["crm.write"].tool], store=store, approver=approver) as run:
        run.call("crm.write", {"q": "refund"})
    assert str(run.result.stop) == "kill_switch:crm.write"
    assert tools["crm.write"].count == 0
    assert run.usage.tool_calls == 0


def test_the_async_run_obeys_the_switch(tools: dict[str, Probe]) -> None:
    """``AsyncRun.call`` passes the same check."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="agent", target="bot", mode="stop_all"))

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(
            policy(), tools=[tools["kb.read"].tool], store=store, agent="bot"
        ) as run:
            await run.call("kb.read", {"q": "x"})
        return run.result

    assert asyncio.run(go()).stop_reason == "kill_switch"
    assert tools["kb.read"].count == 0


# -- model calls ---------------------------------------------------------------------------


@pytest.mark.parametrize("scope", sorted(TARGETS))
def test_stop_all_refuses_model_calls_in_the_runs_it_targets(scope: str) -> None:
    """stop_all (any scope but tool) refuses the model turn and the wrapped model call."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope=scope, target=TARGETS[scope], mode="stop_all"))  # type: ignore[arg-type]
    model = ScriptedModel([final("done")])
    with corral.Run(policy(), store=store, **TARGET) as run:
        run.model_turn(model, [{"role": "user", "content": "hi"}])
    assert str(run.result.stop) == "kill_switch:model"
    assert model.requests == []
    with corral.Run(policy(), store=store, **TARGET) as run:
        run.model_call(model="some-model", messages=[{"role": "user", "content": "hi"}])
    assert str(run.result.stop) == "kill_switch:model"
    with corral.Run(policy(), store=store, **OTHER) as run:
        run.model_turn(model, [{"role": "user", "content": "hi"}])
    assert run.result.stop_reason == ("kill_switch" if scope == "global" else "ok")


@pytest.mark.parametrize(
    "switch",
    [
        KillSwitchState(scope="global", mode="disable_writes"),
        KillSwitchState(scope="global", mode="disable_expensive"),
        KillSwitchState(scope="run", target="run_target"),
        KillSwitchState(scope="tool", target="kb.read", mode="stop_all"),
    ],
    ids=["disable_writes", "disable_expensive", "run-default-mode", "tool-stop_all"],
)
def test_only_stop_all_refuses_model_calls(switch: KillSwitchState) -> None:
    """Write and expensive modes, and tool switches, leave model calls alone."""
    store = MemoryStore()
    store.set_kill_switch(switch)
    with corral.Run(policy(), store=store, **TARGET) as run:
        run.model_turn(ScriptedModel([final("done")]), [{"role": "user", "content": "hi"}])
        run.finish("done")
    assert run.result.stop_reason == "ok"


def test_a_run_switch_without_a_mode_stops_the_model_under_a_stop_all_policy() -> None:
    """The run's own mode_when_enabled decides for a mode-less run switch, model calls too."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="run", target="run_target"))
    with corral.Run(policy("stop_all"), store=store, **TARGET) as run:
        run.model_turn(ScriptedModel([final("done")]), [{"role": "user", "content": "hi"}])
    assert str(run.result.stop) == "kill_switch:model"


def test_the_bounded_loop_stops_at_the_model_under_stop_all() -> None:
    """``corral.run`` under a global stop_all ends kill_switch:model before any request."""
    store = MemoryStore()
    killswitch.enable(store, mode="stop_all", reason="incident")
    model = ScriptedModel([final("done")])
    result = corral.run("task", model=model, tools=[], policy=policy(), store=store)
    assert str(result.stop) == "kill_switch:model"
    assert model.requests == []


# -- the tools on offer --------------------------------------------------------------------


def offered(store: Any, tools: dict[str, Probe], pol: corral.Policy | None = None) -> list[str]:
    run = corral.Run(pol or policy(), tools=[p.tool for p in tools.values()], store=store, **TARGET)
    return [spec["name"] for spec in run.tool_specs("neutral")]


ALL = ["browser.open", "crm.write", "kb.read"]


@pytest.mark.parametrize(
    ("switch", "left"),
    [
        pytest.param(None, ALL, id="none"),
        pytest.param(KillSwitchState(scope="global"), ALL[0:3:2], id="global-default"),
        pytest.param(
            KillSwitchState(scope="tenant", target="acme", mode="disable_expensive"),
            ["crm.write", "kb.read"],
            id="tenant-expensive",
        ),
        pytest.param(
            KillSwitchState(scope="tool", target="kb.read", mode="stop_all"),
            ["browser.open", "crm.write"],
            id="tool-stop_all",
        ),
        pytest.param(
            KillSwitchState(scope="run", target="run_target", mode="stop_all"), [], id="run"
        ),
        pytest.param(
            KillSwitchState(scope="tenant", target="globex", mode="stop_all"), ALL, id="other"
        ),
    ],
)
def test_blocked_tools_are_left_out_of_the_tools_offered(
    switch: KillSwitchState | None, left: list[str], tools: dict[str, Probe]
) -> None:
    """``tool_specs`` offers exactly the tools the switches leave callable."""
    store = MemoryStore()
    if switch is not None:
        store.set_kill_switch(switch)
    assert offered(store, tools) == left


# -- the cache -----------------------------------------------------------------------------


class ManualTime:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakySwitches:
    """A store whose ``kill_switches`` can be made to fail; everything else is the inner store."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def kill_switches(self) -> list[KillSwitchState]:
        self.reads += 1
        if self.down:
            raise StoreError("connection to the database lost")
        return list(self.inner.kill_switches())


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A SQLite store in a temporary file."""
    store = SQLiteStore(str(tmp_path / "corral.db"))
    yield store
    store.close()


def test_a_database_store_is_read_at_most_once_per_refresh_interval(
    sqlite_store: SQLiteStore, tools: dict[str, Probe]
) -> None:
    """Many calls within 0.1 s share one read; a switch set by another process shows after it."""
    clock = ManualTime()
    flaky = FlakySwitches(sqlite_store)
    killswitch.use_cache(flaky, KillSwitchCache(monotonic=clock))  # type: ignore[arg-type]
    pol = many_calls()
    with corral.Run(pol, tools=[tools["kb.read"].tool], store=flaky) as run:
        for i in range(20):
            run.call("kb.read", {"q": str(i)})
        assert flaky.reads == 1
        # Another process sets a switch: this one sees it only once its read is 0.1 s old.
        sqlite_store.set_kill_switch(KillSwitchState(scope="global", mode="stop_all"))
        clock.now += 0.09
        run.call("kb.read", {"q": "still cached"})
        clock.now += 0.02
        run.call("kb.read", {"q": "refreshed"})
    assert str(run.result.stop) == "kill_switch:kb.read"
    assert flaky.reads == 2
    assert tools["kb.read"].calls[-1] == "still cached"


def test_a_switch_changed_through_this_process_is_seen_at_once(
    sqlite_store: SQLiteStore, tools: dict[str, Probe]
) -> None:
    """``killswitch.enable``/``disable`` refresh this process's cache of the store."""
    clock = ManualTime()
    killswitch.use_cache(sqlite_store, KillSwitchCache(monotonic=clock))
    assert killswitch.active(sqlite_store) == ()
    killswitch.enable(sqlite_store, mode="stop_all", actor="ops")
    assert [s.mode for s in killswitch.active(sqlite_store)] == ["stop_all"]
    assert outcomes(sqlite_store, tools, policy())["kb.read"] == "kill_switch"
    assert killswitch.disable(sqlite_store) is True
    assert outcomes(sqlite_store, tools, policy())["kb.read"] == "ok"


def test_the_in_memory_store_is_read_on_every_check() -> None:
    """A switch set directly on a MemoryStore shows at the very next check."""
    store = MemoryStore()
    assert killswitch.cache_for(store).refresh == 0.0
    database = SQLiteStore(":memory:")
    assert killswitch.cache_for(database).refresh == killswitch.REFRESH_SECONDS
    database.close()
    assert killswitch.active(store) == ()
    store.set_kill_switch(KillSwitchState(scope="global"))
    assert len(killswitch.active(store)) == 1


# -- failing closed ------------------------------------------------------------------------


def test_a_failing_read_uses_the_last_good_state_for_2_s_then_fails_closed(
    tools: dict[str, Probe],
) -> None:
    """Reads failing for < 2 s keep the last state; at 2 s every action is refused until a read."""
    clock = ManualTime()
    flaky = FlakySwitches(MemoryStore())
    killswitch.use_cache(flaky, KillSwitchCache(monotonic=clock))  # type: ignore[arg-type]
    pol = many_calls()
    probe = tools["kb.read"]
    with corral.Run(pol, tools=[probe.tool], store=flaky) as run:
        run.call("kb.read", {"q": "good read"})
        flaky.down = True
        for step in range(18):  # 1.89 s of failing reads, one attempt per 0.1 s at most
            clock.now += 0.105
            run.call("kb.read", {"q": f"grace {step}"})
            clock.now += 0.001
            run.call("kb.read", {"q": f"grace {step} again"})  # no read: tried just now
        assert flaky.reads == 19
        assert run.tool_specs("neutral") != []
        clock.now += 0.112
        run.call("kb.read", {"q": "after 2 s"})
    stop = run.result.stop
    assert stop is not None and str(stop) == "control_plane_unavailable:kill_switch"
    assert stop.retryable
    assert "could not be refreshed for 2.0 s" in stop.message
    assert probe.calls[-1] == "grace 17 again"

    # Refused everywhere, without a read per action, until the store answers again.
    reads = flaky.reads
    with corral.Run(pol, tools=[probe.tool], store=flaky) as run:
        with pytest.raises(corral.Stop, match="control_plane_unavailable"):
            run.tool_specs("neutral")
        run.model_turn(ScriptedModel([final("x")]), [{"role": "user", "content": "hi"}])
    assert str(run.result.stop) == "control_plane_unavailable:kill_switch"
    assert flaky.reads == reads
    flaky.down = False
    clock.now += 0.11
    with corral.Run(pol, tools=[probe.tool], store=flaky) as run:
        run.call("kb.read", {"q": "back"})
    assert run.result.stop_reason == "ok"


def test_a_process_that_never_read_the_state_refuses_at_once(tools: dict[str, Probe]) -> None:
    """With no good read to fall back on, the first failing read already refuses."""
    flaky = FlakySwitches(MemoryStore())
    flaky.down = True
    killswitch.use_cache(flaky, KillSwitchCache(monotonic=ManualTime()))  # type: ignore[arg-type]
    with corral.Run(policy(), tools=[tools["kb.read"].tool], store=flaky) as run:
        run.call("kb.read", {"q": "x"})
    assert str(run.result.stop) == "control_plane_unavailable:kill_switch"
    assert "cannot be read" in (run.result.stop.message if run.result.stop else "")
    assert tools["kb.read"].count == 0


def test_failing_closed_on_the_real_clock(tools: dict[str, Probe]) -> None:
    """With the real monotonic clock (short grace for speed) the refusal comes once grace is up."""
    flaky = FlakySwitches(MemoryStore())
    killswitch.use_cache(flaky, KillSwitchCache(refresh=0.01, grace=0.2))  # type: ignore[arg-type]
    pol = many_calls()
    with corral.Run(pol, tools=[tools["kb.read"].tool], store=flaky) as run:
        run.call("kb.read", {"q": "good"})
        flaky.down = True
        began = time.monotonic()
        i = 0
        while time.monotonic() - began < 2.0:
            i += 1
            run.call("kb.read", {"q": str(i)})
            time.sleep(0.005)
    elapsed = time.monotonic() - began
    assert run.result.stop_reason == "control_plane_unavailable"
    assert 0.15 <= elapsed < 0.5


def test_the_defaults_are_100_ms_refresh_and_2_s_grace() -> None:
    """The contract's figures: cached at most 1 s (aim 100 ms), fail closed after 2 s."""
    cache = KillSwitchCache()
    assert (cache.refresh, cache.grace) == (0.1, 2.0)
    assert killswitch.REFRESH_SECONDS <= 1.0


# -- setting switches ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "target", "mode", "message"),
    [
        ("global", "acme", None, "a global kill switch has no target"),
        ("tenant", "", None, "a tenant kill switch needs a target"),
        ("tool", "Browser.Open", None, "'Browser.Open' is not a tool name"),
        ("global", "", "off", "unknown kill-switch mode 'off'"),
        ("fleet", "", None, "unknown kill-switch scope 'fleet'"),
    ],
)
def test_a_switch_that_cannot_mean_anything_is_a_config_error(
    scope: str, target: str, mode: str | None, message: str
) -> None:
    """``killswitch.enable`` refuses a bad scope, target or mode with a clear message."""
    with pytest.raises(ConfigError, match=message):
        killswitch.enable(MemoryStore(), scope=scope, target=target, mode=mode)  # type: ignore[arg-type]


def test_enable_records_who_and_why() -> None:
    """The stored switch carries the reason and the actor ($USER@host by default)."""
    store = MemoryStore()
    killswitch.enable(store, scope="agent", target="bot", reason="looping")
    (sw,) = store.kill_switches()
    assert (sw.scope, sw.target, sw.mode, sw.reason) == ("agent", "bot", None, "looping")
    assert sw.actor == killswitch.default_actor()
    assert "@" in sw.actor


def test_the_library_api_audits_every_change_with_who_and_why() -> None:
    """``enable`` and ``disable`` each append one ``kill_switch`` record; a miss appends none."""
    store = MemoryStore()
    sw = killswitch.enable(
        store, scope="tool", target="crm.write", mode="stop_all", reason="vendor down", actor="ops"
    )
    assert sw.set_at > 0
    assert killswitch.disable(store, scope="tool", target="crm.read", actor="ops") is False
    assert killswitch.disable(store, scope="tool", target="crm.write", reason="back") is True
    records = list(audit.records(store))
    assert [(r.run_id, r.kind, r.actor, dict(r.data)) for r in records] == [
        (killswitch.FLEET_RUN_ID, "kill_switch", "ops",
         {"action": "enable", "scope": "tool", "target": "crm.write", "mode": "stop_all",
          "reason": "vendor down"}),
        (killswitch.FLEET_RUN_ID, "kill_switch", killswitch.default_actor(),
         {"action": "disable", "scope": "tool", "target": "crm.write", "mode": None,
          "reason": "back"}),
    ]  # fmt: skip
    assert audit.verify(store).ok


# -- calls in flight ------------------------------------------------------------------------


class Hanging:
    """An async tool (or model) that waits until cancelled, recording what happened to it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    async def wait(self) -> str:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "finished"


def hanging_tool(hang: Hanging, name: str = "vendor.fetch", effect: str = "read") -> corral.Tool:
    """A registered async tool that hangs (60 s timeout, so only a switch ends it early)."""

    async def fetch(q: str = "") -> str:
        return await hang.wait()

    return corral.tool(fetch, name=name, effect=effect, timeout=60)


def flip_when_started(hang: Hanging, flip: Callable[[], None]) -> threading.Thread:
    """A thread that runs ``flip`` once the hanging call has started."""

    def go() -> None:
        assert hang.started.wait(30)
        time.sleep(0.05)
        flip()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def cancelled_policy(name: str = "vendor.fetch", **extra: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": [name]}, "writes": {"require_approval": False}, **extra}
    )


def test_stop_all_from_the_cli_cancels_a_hanging_async_tool_within_1_s(tmp_path: Path) -> None:
    """Another process runs ``corral kill enable --mode stop_all``: the awaited tool is
    cancelled, the run stops ``kill_switch`` and the attempt is recorded as cancelled."""
    path = tmp_path / "shared.db"
    store = SQLiteStore(str(path))
    hang = Hanging()
    switched: list[float] = []

    def flip() -> None:
        done = subprocess.run(
            [sys.executable, "-m", "corral", "kill", "enable", "--mode", "stop_all",
             "--tenant", "acme", "--reason", "vendor outage", "--db", f"sqlite:///{path}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        switched.append(time.monotonic())

    async def go() -> tuple[corral.RunResult, float]:
        async with corral.AsyncRun(
            cancelled_policy(), tools=[hanging_tool(hang)], store=store, tenant="acme"
        ) as run:
            await run.call("vendor.fetch", {"q": "x"})
        return run.result, time.monotonic()

    try:
        thread = flip_when_started(hang, flip)
        result, ended = asyncio.run(go())
        thread.join(10)
        events = store.events(result.run_id)
    finally:
        store.close()
    delay = ended - switched[0]
    print(f"\nstop_all to cancelled async tool, 2 processes on SQLite: {delay * 1000:.0f} ms")
    assert str(result.stop) == "kill_switch:vendor.fetch"
    assert result.stop is not None and result.stop.extra["cancelled_in_flight"] is True
    assert hang.cancelled.is_set()
    assert delay <= 1.0
    calls = [e.data for e in events if e.kind == "tool_call"]
    assert [(c["outcome"], c["attempt"]) for c in calls] == [("cancelled", 1)]
    assert result.usage.tool_calls == 1  # it was started: charged like a failure


def test_a_cancelled_write_keeps_its_idempotency_key_from_running_again(
    store: MemoryStore,
) -> None:
    """A write cancelled in flight may have happened: its key's outcome is unknown, so the
    same write under the same key is not run again once the switch is off."""
    hang = Hanging()
    starts: list[str] = []

    async def write(q: str = "") -> str:
        starts.append(q)
        return await hang.wait()

    tool = corral.tool(write, name="crm.write", effect="write", timeout=60)
    flip_when_started(hang, lambda: killswitch.enable(store, mode="stop_all", actor="ops"))

    async def go() -> tuple[corral.RunResult, corral.RunResult]:
        results = []
        for _ in range(2):
            async with corral.AsyncRun(
                cancelled_policy("crm.write"), tools=[tool], store=store
            ) as run:
                await run.call("crm.write", {"q": "refund"}, idempotency_key="refund-1")
            results.append(run.result)
            killswitch.disable(store, actor="ops")
        return results[0], results[1]

    first, again = asyncio.run(go())
    assert str(first.stop) == "kill_switch:crm.write"
    assert hang.cancelled.is_set()
    assert starts == ["refund"]  # the second run did not run it again
    # Cancelled where it ran, nothing will finish it: its outcome is unknown at once (not
    # after a lease of waiting), for a reconcile hook or an operator to settle.
    assert again.stop is not None and again.stop.why == "outcome_unknown"


def test_a_switch_that_is_not_stop_all_lets_the_call_in_flight_finish(store: MemoryStore) -> None:
    """Only stop_all cancels: disable_writes set while a write runs lets that write finish."""
    release = threading.Event()

    async def write(q: str = "") -> str:
        killswitch.enable(store, mode="disable_writes", actor="ops")
        await asyncio.sleep(0.35)  # three looks at the switch while it is on
        release.set()
        return "written"

    tool = corral.tool(write, name="crm.write", effect="write", timeout=10)

    async def go() -> tuple[Any, corral.RunResult]:
        async with corral.AsyncRun(cancelled_policy("crm.write"), tools=[tool], store=store) as run:
            out = await run.call("crm.write", {"q": "x"})
        return out, run.result

    out, result = asyncio.run(go())
    assert (out, result.stop_reason, release.is_set()) == ("written", "ok", True)


def test_a_sync_tool_in_a_worker_thread_is_abandoned_under_stop_all(store: MemoryStore) -> None:
    """A sync tool run from a non-main thread is abandoned (like at a deadline) within ~1 s."""
    gate = threading.Event()
    started = Hanging()

    def slow(q: str = "") -> str:
        started.started.set()
        gate.wait(30)
        return "late"

    tool = corral.tool(slow, name="vendor.fetch", timeout=60)
    out: dict[str, Any] = {}

    def in_thread() -> None:
        with corral.Run(cancelled_policy(), tools=[tool], store=store, agent="bot") as run:
            run.call("vendor.fetch", {"q": "x"})
        out["result"], out["ended"] = run.result, time.monotonic()

    flip_when_started(
        started, lambda: (out.setdefault("switched", time.monotonic()),
                          killswitch.enable(store, scope="agent", target="bot", mode="stop_all"))
    )  # fmt: skip
    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(30)
    gate.set()
    assert str(out["result"].stop) == "kill_switch:vendor.fetch"
    assert out["ended"] - out["switched"] <= 1.0


def test_a_sync_tool_inline_in_the_main_thread_is_interrupted_under_stop_all(
    store: MemoryStore,
) -> None:
    """A sync tool run inline (timer signal) is interrupted inside, within ~1 s of stop_all;
    the next call, with the switch off, runs normally and its deadline still holds."""
    assert threading.current_thread() is threading.main_thread()
    started, interrupted = Hanging(), threading.Event()

    def slow(q: str = "") -> str:
        started.started.set()
        try:
            time.sleep(30)
        except BaseException:
            interrupted.set()
            raise
        return "late"

    def quick(q: str = "") -> str:
        return "fine"

    tools = [
        corral.tool(slow, name="vendor.fetch", effect="read", timeout=60),
        corral.tool(quick, name="kb.read", effect="read"),
    ]
    pol = corral.Policy.from_dict({"tools": {"allow": ["vendor.fetch", "kb.read"]}})
    switched: list[float] = []
    flip_when_started(
        started, lambda: (switched.append(time.monotonic()),
                          killswitch.enable(store, mode="stop_all", actor="ops"))
    )  # fmt: skip
    with corral.Run(pol, tools=tools, store=store) as run:
        run.call("vendor.fetch", {"q": "x"})
    ended = time.monotonic()
    assert str(run.result.stop) == "kill_switch:vendor.fetch"
    assert interrupted.is_set() and ended - switched[0] <= 1.0
    outcomes = [e.data["outcome"] for e in store.events(run.id) if e.kind == "tool_call"]
    assert outcomes == ["cancelled"]

    killswitch.disable(store, actor="ops")
    with corral.Run(pol, tools=tools, store=store) as again:
        assert [again.call("kb.read", {"q": str(i)}) for i in range(3)] == ["fine"] * 3
    assert again.result.stop_reason == "ok"


def test_stop_all_cancels_an_async_model_call_in_flight(store: MemoryStore) -> None:
    """An awaited model call is cancelled too: ``kill_switch:model``, recorded as cancelled."""
    hang = Hanging()

    class SlowModel:
        name = "slow"
        price = None

        async def respond(self, request: Any) -> Any:
            return await hang.wait()

    flip_when_started(hang, lambda: killswitch.enable(store, scope="run", target="r-model",
                                                        mode="stop_all"))  # fmt: skip

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(cancelled_policy(), store=store, run_id="r-model") as run:
            await run.model_turn(SlowModel(), [{"role": "user", "content": "hi"}])
        return run.result

    result = asyncio.run(go())
    assert str(result.stop) == "kill_switch:model"
    assert hang.cancelled.is_set()
    outcomes = [e.data["outcome"] for e in store.events("r-model") if e.kind == "model_call"]
    assert outcomes == ["cancelled"]


# -- two processes -------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    import corral

    kind, where = sys.argv[1], sys.argv[2:]
    if kind == "sqlite":
        store = corral.open_store("sqlite:///" + where[0])
    else:
        from corral.stores.postgres import PostgresStore
        store = PostgresStore(where[0], schema=where[1], migrate=False)

    @corral.tool(name="kb.read", effect="read")
    def kb_read(q: str) -> str:
        return q

    policy = corral.Policy.from_dict({
        "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
        "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
    })
    n = 0
    for line in sys.stdin:  # one trial per line from the parent
        if line.strip() != "go":
            break
        ready = False
        while True:
            with corral.Run(policy, tools=[kb_read], store=store) as run:
                while True:
                    n += 1
                    run.call("kb.read", {"q": str(n)})
                    if not ready:
                        ready = True
                        print("ready", flush=True)
                    time.sleep(0.002)
            if run.result.stop_reason != "kill_switch":
                print("error", run.result.stop, flush=True)
                sys.exit(1)
            if ready:
                print("killed", repr(time.time()), flush=True)
                break
            time.sleep(0.005)  # the last switch is still seen: try again
    store.close()
    """
)


class Child:
    """The child process, its lines read on a thread so that waits can time out."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("eof")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, word: str, timeout: float = 15.0) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the child said nothing for {timeout} s (waiting for {word!r})")
        if not line.startswith(word):
            stderr = self.proc.stderr.read() if self.proc.stderr and line == "eof" else ""
            pytest.fail(f"the child said {line!r}, not {word!r}\n{stderr}")
        return line

    def close(self) -> None:
        self.send("done")
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def visibility_delays(
    child: Child, enable: Callable[[], None], disable: Callable[[], None], trials: int
) -> list[float]:
    """Seconds between the parent setting stop_all and the child's first ``kill_switch``."""
    rng = random.Random(6)
    delays = []
    for _ in range(trials):
        child.send("go")
        child.expect("ready")
        time.sleep(rng.uniform(0.02, 0.2))  # land anywhere in the child's refresh cycle
        began = time.time()
        enable()
        seen = float(child.expect("killed").split()[1])
        delays.append(seen - began)
        disable()
    return delays


def report(backend: str, delays: list[float]) -> None:
    print(
        f"\nkill switch visibility, 2 processes on {backend}: "
        f"max {max(delays) * 1000:.0f} ms, mean {statistics.fmean(delays) * 1000:.0f} ms "
        f"over {len(delays)} switches (limit 1000 ms, aim 100 ms)"
    )


def test_another_process_sees_a_switch_within_1_s_on_sqlite(tmp_path: Path) -> None:
    """A child running calls on the same SQLite file gets kill_switch within 1 s of stop_all."""
    path = tmp_path / "shared.db"
    parent = SQLiteStore(str(path))
    child = Child("sqlite", str(path))
    try:
        delays = visibility_delays(
            child,
            lambda: killswitch.enable(parent, mode="stop_all", reason="test", actor="parent"),
            lambda: killswitch.disable(parent),
            trials=5,
        )
    finally:
        child.close()
        parent.close()
    report("SQLite", delays)
    assert max(delays) <= 1.0


def test_another_process_sees_a_switch_within_1_s_on_postgres() -> None:
    """The same on PostgreSQL: a child process sees stop_all within 1 s."""
    pg = crash_pg()
    url = pg.require_postgres()
    with pg.fresh_store(url) as parent:
        child = Child("postgres", url, parent.schema)
        try:
            delays = visibility_delays(
                child,
                lambda: killswitch.enable(parent, mode="stop_all", reason="test", actor="parent"),
                lambda: killswitch.disable(parent),
                trials=5,
            )
        finally:
            child.close()
    report("PostgreSQL", delays)
    assert max(delays) <= 1.0


def test_enable_with_target_none_is_the_global_switch_on_sqlite_too(tmp_path: Path) -> None:
    """Issue 10: killswitch.enable(store, target=None) worked on memory and raised a raw
    StoreError on SQLite; it is the global switch on both, and a scoped switch without a
    target is a ConfigError naming its scope on both."""
    for store in (MemoryStore(), SQLiteStore(tmp_path / "k.db")):
        switch = killswitch.enable(store, target=None, mode="stop_all")
        assert (switch.scope, switch.target) == ("global", "")
        assert [(s.scope, s.target) for s in store.kill_switches()] == [("global", "")]
        with pytest.raises(ConfigError, match="a tenant kill switch needs a target"):
            killswitch.enable(store, scope="tenant", target=None)
        assert killswitch.disable(store, target=None) is True
        store.close()
