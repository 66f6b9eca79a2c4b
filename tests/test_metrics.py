"""Prometheus metrics from real governed runs, read back from the text exposition."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import corral
from corral.controls.approvals import ApprovalDecision
from corral.record import metrics
from corral.stores.base import Event, KillSwitchState
from corral.testing import MemoryStore, ScriptedModel, call, final, prices, turn

P = corral.Policy.from_dict


@pytest.fixture
def m() -> Iterator[metrics.Metrics]:
    """Metrics on a registry of their own, fed by every run of the test."""
    installed = metrics.enable(registry=CollectorRegistry())
    yield installed
    metrics.disable(installed)


def value(m: metrics.Metrics, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in the exposition, 0 if absent."""
    for family in text_string_to_metric_families(metrics.render(m.registry)):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def total(m: metrics.Metrics, name: str) -> float:
    """The sum of every sample called ``name``, whatever its labels."""
    return sum(
        float(s.value)
        for family in text_string_to_metric_families(metrics.render(m.registry))
        for s in family.samples
        if s.name == name
    )


@corral.tool(name="kb.read", effect="read")
def kb(q: str) -> str:
    return f"answer to {q}"


@corral.tool(name="mail.send", effect="write")
def send(to: str) -> str:
    return "sent"


@corral.tool(name="vendor.read", effect="read", retries=0)
def vendor(q: str) -> str:
    raise ConnectionError("vendor down")


def run(script: list[Any], policy: corral.Policy, **kw: Any) -> corral.RunResult:
    kw.setdefault("tools", [kb, send, vendor])
    return corral.run("task", model=ScriptedModel(script), policy=policy, store=MemoryStore(), **kw)


def test_runs_are_counted_by_stop_reason_and_status(m: metrics.Metrics) -> None:
    """``corral_runs_total`` counts each ended run under its stop reason and status."""
    run([call("kb.read", q="a"), final("done")], P({"tools": {"allow": ["kb.read"]}}))
    run([call("mail.send", to="x")], P({"tools": {"allow": ["kb.read"]}}))
    text = metrics.render(m.registry)
    assert 'corral_runs_total{status="ok",stop_reason="ok"} 1.0' in text
    assert 'corral_runs_total{status="stopped",stop_reason="tool_denied"} 1.0' in text


def test_tool_calls_are_counted_by_tool_and_outcome(m: metrics.Metrics) -> None:
    """Executed, failed and cached calls each count under their outcome."""
    policy = P({"tools": {"allow": ["kb.read", "vendor.read"]}})
    run([call("kb.read", q="a"), call("kb.read", q="a"), final("done")], policy)
    run([call("vendor.read", q="x")], policy)
    assert value(m, "corral_tool_calls_total", tool="kb.read", outcome="ok") == 1
    assert value(m, "corral_tool_calls_total", tool="kb.read", outcome="cached") == 1
    assert value(m, "corral_tool_calls_total", tool="vendor.read", outcome="error") == 1


def test_denials_name_the_guard_that_decided(m: metrics.Metrics) -> None:
    """Allowlist, arguments, constraints, budget and loop refusals count once each, by guard."""
    allowed = {"allow": ["kb.read"]}
    run([call("mail.send", to="x")], P({"tools": allowed}))
    run([call("kb.read", wrong=1)], P({"tools": {**allowed, "max_invalid_args": 0}}))
    pattern = {"kb.read": {"constraints": {"q": {"pattern": "^[a-z]+$"}}}}
    run([call("kb.read", q="DROP")], P({"tools": {**allowed, "specs": pattern}}))
    capped = P({"tools": allowed, "budgets": {"max_tool_calls": 2}})
    run([call("kb.read", q=str(i)) for i in range(3)], capped)
    loops = {"tools": allowed, "loops": {"repeats": 2, "window": 3}}
    run([call("kb.read", q="same"), call("kb.read", q="same")], P(loops))
    assert value(m, "corral_denials_total", guard="allowlist", tool="mail.send") == 1
    assert value(m, "corral_denials_total", guard="arguments", tool="kb.read") == 1
    assert value(m, "corral_denials_total", guard="constraints", tool="kb.read") == 1
    assert value(m, "corral_denials_total", guard="budget", tool="kb.read") == 1
    assert value(m, "corral_denials_total", guard="loop", tool="kb.read") == 1
    assert total(m, "corral_denials_total") == 5


def test_kill_switch_and_approval_refusals_are_counted(m: metrics.Metrics) -> None:
    """A kill switch and a refused approval count under ``kill_switch`` and ``approval``."""
    store = MemoryStore()
    store.set_kill_switch(KillSwitchState(scope="tool", target="mail.send", mode="stop_all"))
    policy = P({"tools": {"allow": ["mail.send"]}, "writes": {"require_approval": False}})
    corral.run(
        "task",
        model=ScriptedModel([call("mail.send", to="x")]),
        tools=[send],
        policy=policy,
        store=store,
    )
    approvals = P({"tools": {"allow": ["mail.send"]}, "writes": {"require_approval": True}})
    result = run(
        [call("mail.send", to="x")],
        approvals,
        approver=lambda req: ApprovalDecision(approved=False, approver="ops", reason="no"),
    )
    assert result.stop_reason == "approval_denied"
    assert value(m, "corral_denials_total", guard="kill_switch", tool="mail.send") == 1
    assert value(m, "corral_denials_total", guard="approval", tool="mail.send") == 1
    assert total(m, "corral_denials_total") == 2


def test_observe_mode_counts_what_would_have_been_denied(m: metrics.Metrics) -> None:
    """In observe mode a refusal counts in ``corral_would_stop_total``, not as a denial."""
    policy = {
        "mode": "observe",
        "tools": {"allow": ["kb.read"]},
        "writes": {"require_approval": False},
    }
    result = run([call("mail.send", to="x"), final("done")], P(policy))
    assert result.stop_reason == "ok"
    assert value(m, "corral_would_stop_total", guard="allowlist", tool="mail.send") == 1
    assert total(m, "corral_denials_total") == 0


def test_tool_calls_per_run_and_tokens_per_request_are_histograms(m: metrics.Metrics) -> None:
    """Per-run tool calls and per-request tokens land in buckets (p95 derivable)."""
    policy = P({"tools": {"allow": ["kb.read"]}})
    script = [
        call("kb.read", q="a", _input_tokens=300, _output_tokens=50),
        turn(call("kb.read", q="b"), call("kb.read", q="c")),
        final("done"),
    ]
    run(script, policy)
    assert value(m, "corral_tool_calls_per_run_count") == 1
    assert value(m, "corral_tool_calls_per_run_sum") == 3
    assert value(m, "corral_tool_calls_per_run_bucket", le="2.0") == 0
    assert value(m, "corral_tool_calls_per_run_bucket", le="3.0") == 1
    assert value(m, "corral_tokens_per_request_count") == 3
    assert value(m, "corral_tokens_per_request_bucket", le="500.0") >= 1
    assert value(m, "corral_tokens_per_request_bucket", le="+Inf") == 3


def test_tool_and_model_latency_are_observed(m: metrics.Metrics) -> None:
    """Each executed tool call and model call adds one latency observation."""

    @corral.tool(name="slow.read", effect="read")
    def slow(q: str) -> str:
        time.sleep(0.03)
        return "late"

    policy = P({"tools": {"allow": ["slow.read"]}})
    run([call("slow.read", q="a"), final("done")], policy, tools=[slow])
    assert value(m, "corral_tool_latency_seconds_count", tool="slow.read") == 1
    assert value(m, "corral_tool_latency_seconds_sum", tool="slow.read") >= 0.03
    assert value(m, "corral_tool_latency_seconds_bucket", tool="slow.read", le="0.025") == 0
    assert value(m, "corral_tool_latency_seconds_bucket", tool="slow.read", le="0.5") == 1
    assert value(m, "corral_model_latency_seconds_count", model="scripted") == 2


def test_spend_matches_the_runs_usage_including_failed_calls_billed(m: metrics.Metrics) -> None:
    """``corral_spend_usd_total`` adds model and tool spend, failed vendor calls included."""
    policy = P(
        {
            "tools": {
                "allow": ["kb.read", "vendor.read"],
                "specs": {"kb.read": {"cost_usd": 0.25}, "vendor.read": {"cost_usd": 0.5}},
            },
            "budgets": {"max_usd": 10},
        }
    )
    model = ScriptedModel(
        [call("kb.read", q="a"), call("vendor.read", q="b")], price=prices(1_000, 2_000)
    )
    result = corral.run("task", model=model, tools=[kb, vendor], policy=policy, store=MemoryStore())
    assert result.stop_reason == "tool_error"
    assert result.usage.usd > Decimal("0.75")
    assert total(m, "corral_spend_usd_total") == pytest.approx(float(result.usage.usd))


def test_spend_is_labelled_with_the_tenant_named_at_run_start(m: metrics.Metrics) -> None:
    """A ``run_start`` carrying a tenant labels that run's spend with it."""
    events = [
        Event(run_id="r1", seq=1, kind="run_start", at=1.0, data={"tenant": "acme"}),
        Event(run_id="r1", seq=2, kind="model_call", at=2.0, data={"outcome": "ok", "usd": "0.5"}),
        Event(
            run_id="r1",
            seq=3,
            kind="run_end",
            at=3.0,
            data={"stop_reason": "ok", "status": "ok", "usage": {"usd": "0.75"}},
        ),
    ]
    m(events)
    assert value(m, "corral_spend_usd_total", tenant="acme") == 0.75


def test_a_resumed_run_counts_only_what_its_new_segment_spent(m: metrics.Metrics) -> None:
    """Usage in ``run_end`` covers the whole run; a resumed run adds only the difference."""

    def end(seq: int, usd: str, overrun: int) -> Event:
        usage = {"usd": usd, "overrun_tokens": overrun, "tool_calls": 1}
        data = {"stop_reason": "ok", "status": "ok", "usage": usage}
        return Event(run_id="r", seq=seq, kind="run_end", at=float(seq), data=data)

    m([Event(run_id="r", seq=1, kind="run_start", at=0.0, data={}), end(2, "1.0", 10)])
    resumed = Event(run_id="r", seq=3, kind="run_start", at=3.0, data={"resumed": True})
    m([resumed, end(4, "1.5", 25)])
    assert total(m, "corral_spend_usd_total") == 1.5
    assert value(m, "corral_model_overrun_tokens_total") == 25


def test_tokens_a_provider_billed_above_the_reservation_are_counted(m: metrics.Metrics) -> None:
    """A model that ignores ``max_tokens`` adds its overrun to the overrun counter."""
    model = ScriptedModel([final("long", input_tokens=10, output_tokens=300)], price=prices(0, 1))
    corral.run(
        "task",
        model=model,
        policy=P({"budgets": {"max_usd": 1}}),
        store=MemoryStore(),
        max_tokens=100,
    )
    assert value(m, "corral_model_overrun_tokens_total") == 200


def test_odd_events_never_raise(m: metrics.Metrics) -> None:
    """Events with missing or malformed fields are counted as far as they go, never raise."""
    odd = [
        Event(run_id="x", seq=1, kind="tool_call", at=1.0, data={"usd": "NaN", "seconds": "?"}),
        Event(run_id="x", seq=2, kind="model_call", at=1.0, data={"input_tokens": None}),
        Event(run_id="x", seq=3, kind="run_end", at=1.0, data={"usage": "broken", "stop": 3}),
        Event(run_id="x", seq=4, kind="denied", at=1.0, data={}),
    ]
    m(odd)
    assert value(m, "corral_runs_total", stop_reason="", status="") == 1


def test_enable_is_idempotent_and_disable_stops_counting() -> None:
    """Enabling twice gives the same metrics; after ``disable`` runs are no longer counted."""
    registry = CollectorRegistry()
    first = metrics.enable(registry=registry)
    assert metrics.enable(registry=registry) is first
    run([final("done")], P({}))
    metrics.disable(first)
    run([final("done")], P({}))
    assert value(first, "corral_runs_total", stop_reason="ok", status="ok") == 1


def test_enabling_again_after_disable_goes_on_counting_on_the_same_metrics() -> None:
    """``enable`` after ``disable`` on one registry reuses its metrics (no duplicate
    registration), and the counts go on from where they were."""
    registry = CollectorRegistry()
    first = metrics.enable(registry=registry)
    run([final("done")], P({}))
    metrics.disable(first)
    run([final("done")], P({}))  # not counted
    again = metrics.enable(registry=registry)
    run([final("done")], P({}))
    metrics.disable(again)
    assert again is first
    assert value(again, "corral_runs_total", status="ok", stop_reason="ok") == 2


def test_the_default_registry_is_corrals_own() -> None:
    """Without a registry, metrics go to corral's own registry, which ``render`` reads."""
    installed = metrics.enable()
    try:
        assert installed.registry is metrics.default_registry()
        before = value(installed, "corral_runs_total", stop_reason="ok", status="ok")
        run([final("done")], P({}))
        assert "corral_runs_total" in metrics.render()
        assert value(installed, "corral_runs_total", stop_reason="ok", status="ok") == before + 1
    finally:
        metrics.disable(installed)


def test_start_http_server_serves_the_exposition() -> None:
    """``start_http_server`` serves ``/metrics`` with corral's metrics on it."""
    registry = CollectorRegistry()
    server, thread = metrics.start_http_server(0, "127.0.0.1", registry=registry)
    try:
        run([final("done")], P({}))
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        assert 'corral_runs_total{status="ok",stop_reason="ok"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        metrics.disable(metrics.enable(registry=registry))


def test_render_gives_text_in_the_format_its_content_type_names(m: metrics.Metrics) -> None:
    """``render`` returns ``str`` (not bytes): Prometheus's text format 0.0.4, as
    ``CONTENT_TYPE`` says, parsed back by prometheus_client's own parser."""
    run([final("done")], P({}))
    text = metrics.render(m.registry)
    assert isinstance(text, str)
    assert metrics.CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"corral_runs", "corral_tool_calls", "corral_spend_usd"} <= names


def test_a_refused_approval_that_also_timed_out_counts_once(m: metrics.Metrics) -> None:
    """A refused approval followed by an ``approval_timeout`` stop is one refusal."""

    def ev(seq: int, kind: str, **data: Any) -> Event:
        return Event(run_id="r", seq=seq, kind=kind, at=float(seq), data=data)

    stop = {"reason": "approval_timeout", "detail": "mail.send", "tool": "mail.send"}
    m(
        [
            ev(1, "run_start"),
            ev(2, "approval", tool="mail.send", approved=False, waited=901.0),
            ev(3, "run_end", stop_reason="approval_timeout", status="stopped", stop=stop),
        ]
    )
    assert value(m, "corral_denials_total", guard="approval", tool="mail.send") == 1
    assert total(m, "corral_denials_total") == 1


def test_a_failed_approval_channel_counts_once(m: metrics.Metrics) -> None:
    """An approval channel that failed is one ``approval`` refusal, not also a store one."""
    stop = {"reason": "control_plane_unavailable", "detail": "approvals", "tool": "mail.send"}
    m(
        [
            Event(
                run_id="r",
                seq=1,
                kind="approval",
                at=1.0,
                data={"tool": "mail.send", "approved": False, "error": "boom"},
            ),
            Event(
                run_id="r",
                seq=2,
                kind="run_end",
                at=2.0,
                data={"stop_reason": "control_plane_unavailable", "status": "error", "stop": stop},
            ),
        ]
    )
    assert value(m, "corral_denials_total", guard="approval", tool="mail.send") == 1
    assert total(m, "corral_denials_total") == 1


def test_live_spend_is_labelled_with_the_runs_tenant() -> None:
    """The run_start event carries the tenant, so live spend is counted under it."""
    from prometheus_client import CollectorRegistry

    import corral
    import corral.record.metrics
    from corral.testing import MemoryStore

    registry = CollectorRegistry()
    corral.record.metrics.enable(registry=registry)

    @corral.tool(name="kb.read", effect="read", cost_usd="0.5")
    def kb(q: str) -> str:
        """Read."""
        return "x"

    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    with corral.Run(policy, tools=[kb], store=MemoryStore(), tenant="acme") as run:
        run.call("kb.read", {"q": "a"})
    text = corral.record.metrics.render(registry)
    assert 'corral_spend_usd_total{tenant="acme"} 0.5' in text
