"""OpenTelemetry spans of governed runs (GenAI conventions), checked with the in-memory exporter."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import corral
from corral.record import tracing
from corral.stores.base import Event, RunRecord
from corral.testing import MemoryStore, ScriptedModel, call, final, turn

P = corral.Policy.from_dict


class Traces:
    """A tracer provider exporting to memory, and the spans it has finished."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    def root(self) -> ReadableSpan:
        (span,) = self.named("invoke_agent")
        return span


@pytest.fixture
def traces() -> Iterator[Traces]:
    """Spans of every run in the test, through a sink of their own."""
    t = Traces()
    sink = tracing.enable(t.provider)
    yield t
    tracing.disable(sink)


@corral.tool(name="kb.read", effect="read")
def kb(q: str) -> str:
    time.sleep(0.002)
    return f"answer to {q}"


@corral.tool(name="vendor.read", effect="read", retries=0)
def vendor(q: str) -> str:
    raise ConnectionError("vendor down")


ALLOW = P({"tools": {"allow": ["kb.read", "vendor.read"]}})


def run(script: list[Any], policy: corral.Policy = ALLOW, **kw: Any) -> corral.RunResult:
    kw.setdefault("store", MemoryStore())
    return corral.run("task", model=ScriptedModel(script), tools=[kb, vendor], policy=policy, **kw)


def test_a_run_is_an_invoke_agent_span_over_chat_and_execute_tool_spans(traces: Traces) -> None:
    """One ``invoke_agent`` span per run, parent of its ``chat`` and ``execute_tool`` spans."""
    run([call("kb.read", q="a"), final("done")])
    root = traces.root()
    children = [s for s in traces.spans if s is not root]
    names = sorted(s.name for s in children)
    assert names == ["chat scripted", "chat scripted", "execute_tool kb.read"]
    for child in children:
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
    assert root.parent is None


def test_the_run_span_carries_gen_ai_and_corral_attributes(traces: Traces) -> None:
    """``invoke_agent`` has the operation, the run id as conversation id, usage and the stop."""
    result = run([call("kb.read", q="a", _input_tokens=120, _output_tokens=30), final("done")])
    attrs = traces.root().attributes or {}
    assert attrs["gen_ai.operation.name"] == "invoke_agent"
    assert attrs["gen_ai.conversation.id"] == result.run_id
    assert attrs["gen_ai.usage.input_tokens"] == result.usage.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == result.usage.output_tokens
    assert attrs["corral.stop_reason"] == "ok"
    assert attrs["corral.status"] == "ok"
    assert attrs["corral.usd"] == str(result.usage.usd)
    assert attrs["corral.tool_calls"] == 1
    assert traces.root().status.status_code == StatusCode.UNSET


def test_chat_spans_follow_the_genai_conventions(traces: Traces) -> None:
    """``chat`` spans carry the model, ``max_tokens``, usage and finish reasons."""
    run([final("done", input_tokens=50, output_tokens=7)], max_tokens=64)
    (chat,) = traces.named("chat")
    attrs = chat.attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "scripted"
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert (attrs["gen_ai.usage.input_tokens"], attrs["gen_ai.usage.output_tokens"]) == (50, 7)
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)


def test_chat_spans_name_the_provider_the_model_declares(traces: Traces) -> None:
    """``gen_ai.provider.name`` comes from the model's ``genai_provider`` (``openai`` for the
    OpenAI adapter, ``anthropic`` for Anthropic's), from ``model_call(provider=...)`` for a
    call of your own, and is absent for a model that names none."""
    from corral.models.anthropic import AnthropicModel
    from corral.models.openai import OpenAIModel

    assert (OpenAIModel.genai_provider, AnthropicModel.genai_provider) == ("openai", "anthropic")
    declared = ScriptedModel([final("done")], name="gpt-test")
    declared.genai_provider = "openai"  # type: ignore[attr-defined]
    corral.run("t", model=declared, policy=ALLOW, store=MemoryStore())
    corral.run("t", model=ScriptedModel([final("done")]), policy=ALLOW, store=MemoryStore())
    with corral.Run(ALLOW, store=MemoryStore()) as governed:
        with governed.model_call(model="claude-x", provider="anthropic", input_tokens=10) as mc:
            mc.settle(input_tokens=10, output_tokens=5)
        governed.finish("ok")
    chats = sorted(traces.named("chat"), key=lambda s: s.start_time or 0)
    assert [(c.attributes or {}).get("gen_ai.provider.name") for c in chats] == [
        "openai",
        None,
        "anthropic",
    ]


def test_execute_tool_spans_name_the_tool_and_mark_failures(traces: Traces) -> None:
    """A failed tool call is an ``execute_tool`` span with status ERROR and ``error.type``."""
    result = run([call("kb.read", q="a"), call("vendor.read", q="b")])
    assert result.stop_reason == "tool_error"
    ok, failed = sorted(traces.named("execute_tool"), key=lambda s: s.start_time or 0)
    assert (ok.attributes or {})["gen_ai.tool.name"] == "kb.read"
    assert (ok.attributes or {})["gen_ai.operation.name"] == "execute_tool"
    assert (ok.attributes or {})["corral.outcome"] == "ok"
    assert ok.status.status_code == StatusCode.UNSET
    assert (failed.attributes or {})["gen_ai.tool.name"] == "vendor.read"
    assert (failed.attributes or {})["error.type"] == "tool_error"
    assert failed.status.status_code == StatusCode.ERROR
    root = traces.root()
    assert root.status.status_code == StatusCode.ERROR
    assert (root.attributes or {})["error.type"] == "tool_error"


def test_execute_tool_spans_carry_the_tool_call_id(traces: Traces) -> None:
    """``gen_ai.tool.call.id``: the call's identity in the loop, or the ``call_id`` a caller
    passed to ``Run.call``, on the span of every outcome (ok, failed)."""
    run([call("kb.read", q="a"), call("vendor.read", q="b")])
    ok, failed = sorted(traces.named("execute_tool"), key=lambda s: s.start_time or 0)
    assert (ok.attributes or {})["gen_ai.tool.call.id"] == "turn-1.0"
    assert (failed.attributes or {})["gen_ai.tool.call.id"] == "turn-2.0"
    with corral.Run(ALLOW, tools=[kb], store=MemoryStore()) as governed:
        governed.call("kb.read", {"q": "x"}, call_id="toolu_01ABC")
        governed.call("kb.read", {"q": "y"})
    spans = sorted(traces.named("execute_tool"), key=lambda s: s.start_time or 0)[2:]
    assert [(s.attributes or {}).get("gen_ai.tool.call.id") for s in spans] == [
        "toolu_01ABC",
        None,
    ]


def test_spans_are_timed_from_the_events_and_nested_in_order(traces: Traces) -> None:
    """Children start and end inside the run's span, in the order they happened."""
    run([call("kb.read", q="a"), turn(call("kb.read", q="b"), call("kb.read", q="c")), final("x")])
    root = traces.root()
    children = sorted((s for s in traces.spans if s is not root), key=lambda s: s.start_time or 0)
    kinds = [s.name.split()[0] for s in children]
    assert kinds == ["chat", "execute_tool", "chat", "execute_tool", "execute_tool", "chat"]
    assert root.start_time is not None and root.end_time is not None
    previous_end = 0
    for span in children:
        assert span.start_time is not None and span.end_time is not None
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time
        assert span.start_time >= previous_end
        previous_end = span.end_time
    (first_tool,) = [s for s in children if "kb.read" in s.name][:1]
    assert first_tool.end_time - first_tool.start_time >= 2_000_000  # the tool slept 2 ms


def test_a_denied_call_is_a_span_event_naming_the_guard(traces: Traces) -> None:
    """A denial is a ``corral.denied`` event on the run's span, not an ``execute_tool`` span."""
    result = run([call("vendor.read", q="x")], P({"tools": {"allow": ["kb.read"]}}))
    assert result.stop_reason == "tool_denied"
    assert traces.named("execute_tool") == []
    root = traces.root()
    denied = [e for e in root.events if e.name == "corral.denied"]
    assert len(denied) == 1
    attrs = denied[0].attributes or {}
    assert attrs["corral.guard"] == "allowlist"
    assert attrs["corral.decision"] == "denied"
    assert attrs["corral.why"] == "not_allowed"
    assert attrs["gen_ai.tool.name"] == "vendor.read"
    assert (root.attributes or {})["corral.stop"] == "tool_denied:vendor.read"


def test_a_budget_stop_is_recorded_with_its_figures(traces: Traces) -> None:
    """A budget refusal names the ``budget`` guard; the stop text carries limit and value."""
    policy = P({"tools": {"allow": ["kb.read"]}, "budgets": {"max_tool_calls": 1}})
    run([call("kb.read", q="a"), call("kb.read", q="b")], policy)
    root = traces.root()
    assert (root.attributes or {})["corral.stop"].startswith("max_tool_calls:run (limit 1")
    (denied,) = [e for e in root.events if e.name == "corral.denied"]
    assert (denied.attributes or {})["corral.guard"] == "budget"
    assert [e.name for e in root.events][-1] == "corral.stop"


def test_observe_mode_records_would_stop_events(traces: Traces) -> None:
    """In observe mode the refusal that would have happened is a ``corral.would_stop`` event."""
    policy = P({"mode": "observe", "tools": {"allow": ["kb.read"]}})
    run([call("vendor.read", q="a"), final("done")], policy)
    events = [e for e in traces.root().events if e.name == "corral.would_stop"]
    assert len(events) == 1
    assert (events[0].attributes or {})["corral.guard"] == "allowlist"
    assert traces.named("execute_tool vendor.read")


def test_spans_are_emitted_when_the_run_ends(traces: Traces) -> None:
    """Nothing is exported while the run is going; everything once it has ended."""
    with corral.Run(ALLOW, tools=[kb], store=MemoryStore(), agent="support-bot") as r:
        r.call("kb.read", {"q": "a"})
        assert traces.spans == []
        r.finish("done")
    assert sorted(s.name.split()[0] for s in traces.spans) == ["execute_tool", "invoke_agent"]


def test_agent_and_tenant_come_from_the_run_start_event() -> None:
    """A ``run_start`` naming the agent and tenant names the span and sets the attributes."""
    t = Traces()
    events = [
        Event(
            run_id="r1", seq=1, kind="run_start", at=10.0, data={"agent": "bot", "tenant": "acme"}
        ),
        Event(
            run_id="r1", seq=2, kind="run_end", at=11.0, data={"stop_reason": "ok", "status": "ok"}
        ),
    ]
    assert tracing.emit_run(events, tracer_provider=t.provider) == 1
    root = t.root()
    assert root.name == "invoke_agent bot"
    assert (root.attributes or {})["gen_ai.agent.name"] == "bot"
    assert (root.attributes or {})["corral.tenant"] == "acme"
    assert (root.start_time, root.end_time) == (10_000_000_000, 11_000_000_000)


def test_a_stored_run_is_exported_with_its_record(tmp_path: Any) -> None:
    """``export_run`` turns a run recorded in SQLite into spans, agent and tenant included."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result = run([call("kb.read", q="a"), final("done")], store=url, tenant="acme", agent="bot")
    t = Traces()
    assert tracing.export_run(result.run_id, url, tracer_provider=t.provider) == 4
    root = t.root()
    assert root.name == "invoke_agent bot"
    assert (root.attributes or {})["corral.tenant"] == "acme"
    assert (root.attributes or {})["gen_ai.conversation.id"] == result.run_id
    with pytest.raises(corral.ConfigError, match="no run 'nope'"):
        tracing.export_run("nope", url, tracer_provider=t.provider)


def test_an_interrupted_run_is_an_error_span() -> None:
    """A stored run whose process died (no ``run_end``) ends ERROR, status ``interrupted``."""
    t = Traces()
    record = RunRecord(id="r9", status="interrupted", started_at=5.0, ended_at=8.0)
    events = [
        Event(run_id="r9", seq=1, kind="run_start", at=5.0, data={}),
        Event(
            run_id="r9",
            seq=2,
            kind="tool_call",
            at=6.0,
            data={"tool": "kb.read", "outcome": "ok", "seconds": 0.5},
        ),
        Event(run_id="r9", seq=3, kind="interrupted", at=9.0, data={"why": "owner died"}),
    ]
    assert tracing.emit_run(events, record=record, tracer_provider=t.provider) == 2
    root = t.root()
    assert root.status.status_code == StatusCode.ERROR
    assert (root.attributes or {})["corral.status"] == "interrupted"
    assert [e.name for e in root.events] == ["corral.interrupted"]
    (tool,) = t.named("execute_tool")
    assert (tool.start_time, tool.end_time) == (5_500_000_000, 6_000_000_000)


def test_a_resumed_run_is_one_trace_per_segment() -> None:
    """Each ``run_start`` of a resumed run opens a new ``invoke_agent`` span."""
    t = Traces()
    end = {"stop_reason": "ok", "status": "ok"}
    events = [
        Event(run_id="r", seq=1, kind="run_start", at=1.0, data={}),
        Event(run_id="r", seq=2, kind="run_end", at=2.0, data=end),
        Event(run_id="r", seq=3, kind="run_start", at=3.0, data={"resumed": True}),
        Event(run_id="r", seq=4, kind="run_end", at=4.0, data=end),
    ]
    assert tracing.emit_run(events, tracer_provider=t.provider) == 2
    resumed = [(s.attributes or {}).get("corral.resumed", False) for s in t.named("invoke_agent")]
    assert sorted(resumed) == [False, True]


def test_pending_runs_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``MAX_PENDING_RUNS`` the oldest unfinished run is emitted as it is."""
    monkeypatch.setattr(tracing, "MAX_PENDING_RUNS", 2)
    t = Traces()
    sink = tracing.TraceSink(t.provider)
    for i in range(3):
        sink([Event(run_id=f"r{i}", seq=1, kind="run_start", at=float(i), data={})])
    assert [(s.attributes or {})["corral.run_id"] for s in t.spans] == ["r0"]
    assert (t.spans[0].attributes or {})["corral.status"] == "incomplete"
    sink.flush()
    assert len(t.spans) == 3


def test_events_past_the_per_run_bound_are_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run with more events than ``MAX_EVENTS_PER_RUN`` says how many were dropped."""
    monkeypatch.setattr(tracing, "MAX_EVENTS_PER_RUN", 2)
    t = Traces()
    sink = tracing.TraceSink(t.provider)
    step = [Event(run_id="r", seq=i, kind="step", at=float(i), data={"n": i}) for i in range(2, 6)]
    start = Event(run_id="r", seq=1, kind="run_start", at=1.0, data={})
    end = Event(run_id="r", seq=9, kind="run_end", at=9.0, data={"stop_reason": "ok"})
    sink([start, *step, end])
    root = t.root()
    assert (root.attributes or {})["corral.events_dropped"] == 3
    assert (root.attributes or {})["corral.stop_reason"] == "ok"


def test_a_missing_opentelemetry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the OpenTelemetry packages, ``enable`` says which extra to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(corral.ConfigError, match=r"pip install 'corral\[otel\]'"):
        tracing.enable()
