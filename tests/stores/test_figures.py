"""``run_figures``: every backend returns the same figures of the ended runs in a time window,
from the run records and their events, in one query."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from corral.stores import Store
from corral.stores.base import Event, RunFigures, RunRecord

T0 = 1_000_000.0


def record(
    store: Store,
    run_id: str,
    *,
    at: float,
    events: list[tuple[str, dict[str, Any]]],
    tenant: str = "acme",
    agent: str = "bot",
    status: str = "ok",
    stop_reason: str | None = "ok",
    usage: dict[str, Any] | None = None,
) -> None:
    """A run that started at ``at``, its events, and its end (unless still running)."""
    store.create_run(
        RunRecord(id=run_id, tenant=tenant, agent=agent, started_at=at, policy_digest="pd1")
    )
    store.append_events(
        [
            Event(run_id=run_id, seq=i, kind=kind, at=at + i, data=data, tenant=tenant)
            for i, (kind, data) in enumerate(events, start=1)
        ]
    )
    if status != "running":
        store.update_run(run_id, status=status, stop_reason=stop_reason, usage=usage or {})


def seed(store: Store) -> None:
    """Five runs: two in the window, one before it, one still running, one of another tenant."""
    usage = {"tool_calls": 3, "usd": "0.75", "tool_calls_by_tool": {"kb.read": 2, "web": 1}}
    record(
        store,
        "r1",
        at=T0 + 10,
        usage=usage,
        events=[
            ("run_start", {"tools": {"kb.read": "aaaa", "web": "bbbb"}}),
            ("model_call", {"model": "m-1", "outcome": "ok", "input_tokens": 100,
                            "output_tokens": 20}),
            ("tool_call", {"tool": "kb.read", "outcome": "ok", "seconds": 0.5}),
            ("tool_call", {"tool": "kb.read", "outcome": "cached"}),
            ("tool_call", {"tool": "web", "outcome": "error", "seconds": 2.25}),
            ("model_call", {"model": "m-2", "outcome": "ok", "input_tokens": 300,
                            "output_tokens": 80}),
            ("model_call", {"model": "m-2", "outcome": "error", "error": "boom"}),
            ("denied", {"tool": "mail.send", "why": "not_allowed"}),
        ],
    )  # fmt: skip
    record(store, "r2", at=T0 + 20, status="stopped", stop_reason="tool_error", events=[])
    record(store, "before", at=T0 - 1, events=[("run_start", {})])
    record(store, "running", at=T0 + 30, status="running", events=[("run_start", {})])
    record(store, "other", at=T0 + 40, tenant="globex", events=[("run_start", {})])


def test_the_figures_of_a_window_come_from_records_and_events(store: Store) -> None:
    """Ended runs that started in [since, until), oldest first: usage from the record, model
    calls that answered and their tokens, tool calls' seconds, model ids, tool digests."""
    seed(store)
    got = store.run_figures(since=T0, until=T0 + 100, tenant="acme")
    assert [r.run_id for r in got] == ["r1", "r2"]
    first = got[0]
    assert first == RunFigures(
        run_id="r1",
        tenant="acme",
        agent="bot",
        status="ok",
        stop_reason="ok",
        started_at=T0 + 10,
        policy_digest="pd1",
        tool_calls=3,
        tool_calls_by_tool={"kb.read": 2, "web": 1},
        usd=Decimal("0.75"),
        requests=2,
        tokens=500,
        tool_seconds=first.tool_seconds,
        models=("m-1", "m-2"),
        tool_digests={"kb.read": "aaaa", "web": "bbbb"},
    )
    assert sorted(first.tool_seconds) == [0.5, 2.25]
    assert got[1] == RunFigures(
        run_id="r2", tenant="acme", agent="bot", status="stopped", stop_reason="tool_error",
        started_at=T0 + 20, policy_digest="pd1",
    )  # fmt: skip


def test_the_window_tenant_agent_and_limit_filter(store: Store) -> None:
    """``until`` is exclusive, ``tenant`` and ``agent`` filter, ``limit`` keeps the oldest."""
    seed(store)
    assert [r.run_id for r in store.run_figures(since=T0, until=T0 + 20)] == ["r1"]
    assert [r.run_id for r in store.run_figures(since=0, until=T0 + 100)] == [
        "before",
        "r1",
        "r2",
        "other",
    ]
    assert [r.run_id for r in store.run_figures(since=T0, until=T0 + 100, tenant="globex")] == [
        "other"
    ]
    assert store.run_figures(since=T0, until=T0 + 100, agent="nobody") == []
    assert [r.run_id for r in store.run_figures(since=0, until=T0 + 100, limit=2)] == [
        "before",
        "r1",
    ]


def test_figures_left_out_rather_than_made_up(store: Store) -> None:
    """Damaged values (text tokens, negative seconds, a usage that is no mapping) count as
    nothing, never as a figure."""
    record(
        store,
        "odd",
        at=T0,
        usage={"tool_calls": "many", "usd": "NaN"},
        events=[
            ("run_start", {"tools": "not a mapping"}),
            ("model_call", {"model": "m", "outcome": "ok", "input_tokens": "x",
                            "output_tokens": 5}),
            ("tool_call", {"tool": "t", "outcome": "ok", "seconds": "slow"}),
        ],
    )  # fmt: skip
    (odd,) = store.run_figures(since=T0, until=T0 + 1)
    assert (odd.tool_calls, odd.usd, odd.requests, odd.tokens) == (0, Decimal(0), 1, 5)
    assert (odd.tool_seconds, odd.models, odd.tool_digests) == ((), ("m",), {})


def test_the_query_agrees_with_the_runs_events(store: Store) -> None:
    """Real governed runs (answered and failed model calls, tool calls that ran, were cached
    or failed): each backend's one query gives what folding the run's own events gives."""
    import corral
    from corral.stores.figures import from_events
    from corral.testing import ScriptedModel, call, error, final

    @corral.tool(name="kb.read", effect="read")
    def kb(q: str) -> str:
        return f"notes on {q}"

    @corral.tool(name="web.read", effect="read", retries=1)
    def web(url: str) -> str:
        raise ConnectionError("down")

    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read", "web.read"]}})
    scripts = [
        [call("kb.read", q="a"), call("kb.read", q="a"), call("web.read", url="u"), final("ok")],
        [call("kb.read", q="b"), error(RuntimeError("model down"))],
        [final("nothing to do")],
    ]
    start = 0.0
    for script in scripts:
        corral.run("task", model=ScriptedModel(script, name="m-x"), tools=[kb, web],
                   policy=policy, store=store, tenant="acme", agent="bot")  # fmt: skip
    got = store.run_figures(since=start, until=2e10, tenant="acme")
    assert len(got) == 3
    for figures in got:
        record = store.get_run(figures.run_id)
        assert record is not None
        expected = from_events(record, store.events(figures.run_id))
        assert figures == expected.__class__(
            **{**_fields(expected), "tool_seconds": figures.tool_seconds}
        )
        assert sorted(figures.tool_seconds) == sorted(expected.tool_seconds)
    by_answer = {f.requests: f for f in got}
    assert by_answer[3].tool_calls == 3 and by_answer[3].models == ("m-x",)
    assert set(by_answer[3].tool_digests) == {"kb.read", "web.read"}


def _fields(figures: RunFigures) -> dict[str, Any]:
    return {name: getattr(figures, name) for name in RunFigures.__dataclass_fields__}
