"""``Run.call`` of a plain read calls the chain directly (gateway/direct.py) instead of
driving the flow: the two must be indistinguishable. Each scenario runs twice, once on the
direct path and once with it turned off, and everything observable must match: what each
call returned or raised, the events recorded (bar timings), the usage and the result."""

from __future__ import annotations

import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.gateway import direct
from corral.stores.base import KillSwitchState
from corral.testing import ManualClock, MemoryStore

# The recording's digest covers its timings too.
TIMINGS = {"seconds", "at", "retry_after", "recording"}


class Flaky(Exception):
    pass


class Vendor:
    def __init__(self) -> None:
        self.calls = 0

    def tools(self) -> list[corral.Tool]:
        @corral.tool(name="kb.read", effect="read", cost_usd=0.01, retries=1)
        def kb_read(query: str, limit: int = 3) -> Any:
            self.calls += 1
            if query.startswith("raise"):
                raise Flaky(f"vendor failed on {query}")
            if query.startswith("html"):
                return "<b>bold</b> " + query
            if query.startswith("dict"):
                return {"q": query, "n": limit}
            if query.startswith("big"):
                return "x" * 5000
            if query.startswith("nul"):
                return "a\0b"
            if query.startswith("secret"):
                return "token sk-live-" + "a" * 24
            return f"answer for {query} ({limit})"

        @corral.tool(name="kb.write", effect="write")
        def kb_write(text: str) -> str:
            return "written " + text

        return [kb_read, kb_write]


POLICY = {
    "tools": {
        "allow": ["kb.read", "kb.write"],
        "max_invalid_args": 3,
        "specs": {"kb.read": {"max_output_chars": 200}},
    },
    "budgets": {"max_tool_calls": 9, "max_usd": 0.06, "max_steps": 50},
    "writes": {"require_approval": False},
    "loops": {"repeats": 3, "window": 5},
    "degrade": {"min_calls": 3, "failure_rate": 0.5, "window_seconds": 60},
}

queries = st.sampled_from(
    ["a", "b", "c", "raise 1", "html", "dict", "big", "nul", "secret", "raise 2", "a"]
)
args = st.one_of(
    st.fixed_dictionaries({"query": queries}),
    st.fixed_dictionaries({"query": queries, "limit": st.integers(-2, 5)}),
    st.sampled_from([{}, {"query": 7}, {"query": "a", "extra": 1}, '{"query": "json"}', "[1]"]),
    st.just(None),
)
switches = st.sampled_from(
    [("switch", "stop_all"), ("switch", "disable_writes"), ("switch", "disable_expensive")]
)
calls = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["kb.read", "kb.read", "kb.read", "kb.write", "nope"]), args),
        switches,
        st.just(("clear", None)),
    ),
    max_size=14,
)
cache_on = st.booleans()
#: Policy variants on top of POLICY: observe mode (every guard, or budgets only), argument
#: constraints on the read, loops and degrade handed back to the model.
VARIANTS: dict[str, dict[str, Any]] = {
    "enforce": {},
    "observe": {"mode": "observe"},
    "observe budgets": {"mode": {"budgets": "observe", "loops": "observe"}},
    "constraints": {"read_constraints": {"query": {"pattern": "^[a-z ]+$"}}},
    "tell model": {
        "loops": {"repeats": 2, "window": 4, "on_detected": "tell_model"},
        "degrade": {"min_calls": 2, "failure_rate": 0.5, "on_degraded": "tell_model"},
    },
}
variants = st.sampled_from(sorted(VARIANTS))


def scenario(
    steps: list[tuple[str, Any]], cache: bool, *, directly: bool, variant: str = "enforce"
) -> tuple[list[Any], list[Any], Any, int]:
    pol = dict(POLICY)
    extra = dict(VARIANTS[variant])
    constraints = extra.pop("read_constraints", None)
    pol.update(extra)
    tools = dict(pol["tools"])  # type: ignore[arg-type]
    spec: dict[str, Any] = {"max_output_chars": 200, "cache": cache}
    if constraints:
        spec["constraints"] = constraints
    tools["specs"] = {"kb.read": spec}
    pol["tools"] = tools
    store = MemoryStore()
    vendor = Vendor()
    seen: list[Any] = []
    with corral.Run(
        corral.Policy.from_dict(pol),
        tools=vendor.tools(),
        store=store,
        clock=ManualClock(),
        credentials={"kb": {"token": "sk-live-" + "a" * 24}},
    ) as run:
        if not directly:
            run._core.plans.update({"kb.read": None, "kb.write": None})
        for name, arguments in steps:
            if name == "switch":
                store.set_kill_switch(KillSwitchState(scope="global", mode=arguments))
                continue
            if name == "clear":
                store.clear_kill_switch("global")
                continue
            try:
                seen.append(("ok", run.call(name, arguments)))
            except corral.Stop as stop:
                seen.append(("stop", stop.info.to_dict()))
                break
            except corral.ToolRejected as rejected:
                seen.append(("rejected", rejected.reason, rejected.message))
            seen.append(run.last_call)
        if directly:
            planned = run._core.plans.get("kb.read", "none")
            assert planned is None or planned == "none" or isinstance(planned, direct.Plan)
    events = [
        (e.kind, {k: v for k, v in e.data.items() if k not in TIMINGS})
        for e in store.events(run.id)
    ]
    result = run.result
    return seen, events, (result.status, result.stop_reason, result.usage), vendor.calls


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=calls, cache=cache_on, variant=variants)
def test_the_direct_path_and_the_flow_are_indistinguishable(
    steps: list[tuple[str, Any]], cache: bool, variant: str
) -> None:
    direct_run = scenario(steps, cache, directly=True, variant=variant)
    assert direct_run == scenario(steps, cache, directly=False, variant=variant)


def test_a_plain_read_takes_the_direct_path_and_the_rest_the_flow() -> None:
    pol = corral.Policy.from_dict(POLICY)
    with corral.Run(pol, tools=Vendor().tools(), store="memory://") as run:
        run.call("kb.read", {"query": "a"})
        run.call("kb.write", {"text": "t"})
        plans = run._core.plans
        assert isinstance(plans["kb.read"], direct.Plan)
        assert plans["kb.write"] is None  # a write: the flow (claims, approvals)
        run.call("kb.read", {"query": "b"}, call_id="c1")  # a call id: the flow
        assert run.last_call is not None and run.last_call.outcome == "executed"


def test_a_tool_raising_a_base_exception_is_a_tool_failure_on_the_direct_path() -> None:
    class Hostile(BaseException):
        pass

    @corral.tool(name="kb.read", effect="read", retries=0)
    def kb_read(query: str) -> str:
        raise Hostile("not an Exception")

    pol = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    with corral.Run(pol, tools=[kb_read], store="memory://") as run:
        run.call("kb.read", {"query": "a"})
    assert run.result.stop_reason == "tool_error"
    assert "not an Exception" in (run.result.stop.message or "")


def test_the_direct_path_is_safe_from_threads() -> None:
    """Several threads calling one run: each call is counted once, no hold leaks."""

    @corral.tool(name="kb.read", effect="read", cost_usd=0.001)
    def kb_read(query: str) -> str:
        return query

    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"], "specs": {"kb.read": {"cache": False}}},
            "budgets": {"max_tool_calls": 400, "max_usd": 10, "max_steps": 10},
            "loops": {"repeats": 5, "window": 5},
        }
    )
    errors: list[BaseException] = []
    with corral.Run(pol, tools=[kb_read], store="memory://") as run:

        def work(n: int) -> None:
            for i in range(150):
                try:
                    run.call("kb.read", {"query": f"{n}-{i}"})
                except corral.Stop:
                    return
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert run.result.stop_reason == "max_tool_calls"
    assert run.result.usage.tool_calls == 400
