"""OpenTelemetry traces of governed runs, following the GenAI semantic conventions.

Needs the optional OpenTelemetry packages (``pip install 'corral[otel]'``).

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> import corral
>>> from corral.record import tracing
>>> from corral.testing import ScriptedModel, final
>>> exporter = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> sink = tracing.enable(provider)
>>> policy = corral.Policy.from_dict({})
>>> _ = corral.run("hi", model=ScriptedModel([final("hello")]), policy=policy, store="memory://")
>>> tracing.disable(sink)
>>> sorted(s.name for s in exporter.get_finished_spans())
['chat scripted', 'invoke_agent']

One trace per run (per segment of a resumed run):

- ``invoke_agent [agent]``: the run. ``gen_ai.operation.name=invoke_agent``,
  ``gen_ai.agent.name``, ``gen_ai.conversation.id`` (the run id),
  ``gen_ai.usage.input_tokens`` / ``output_tokens``; ``corral.run_id``,
  ``corral.tenant``, ``corral.status``, ``corral.stop_reason``, ``corral.stop``
  (``max_usd:run (limit 1.00, would be 1.40)``), ``corral.usd``, ``corral.steps``,
  ``corral.tool_calls``. Status ``ERROR`` (``error.type`` = the stop reason) when
  the run's status is ``error``.
- ``chat {model}`` per model call: ``gen_ai.provider.name`` (the model's
  ``genai_provider``: ``openai``, ``anthropic``; absent when a model names none),
  ``gen_ai.request.model``,
  ``gen_ai.request.max_tokens``, ``gen_ai.usage.*``,
  ``gen_ai.response.finish_reasons``, ``corral.usd``, ``corral.outcome``.
- ``execute_tool {tool}`` per tool-call attempt: ``gen_ai.tool.name``,
  ``gen_ai.tool.type=function``, ``gen_ai.tool.call.id`` when known,
  ``corral.outcome``, ``corral.attempt``, ``corral.usd``; and the caller's own
  attributes (``Run.authorize(..., attributes=)``: the MCP proxy's ``mcp.server``,
  ``mcp.tool``, ``mcp.session.id``, ``mcp.protocol.version``, ``mcp.method``).
- Decisions are span events on the run's span: ``corral.denied`` (with
  ``corral.guard``, ``corral.decision=denied``, ``corral.why``,
  ``gen_ai.tool.name``), ``corral.approval``, ``corral.would_stop``,
  ``corral.skipped``, ``corral.step``, ``corral.warning``, ``corral.stop``.

Events reach a sink after the fact, so spans carry explicit times: a call ends at
its event's time and starts ``seconds`` earlier; the run's span covers its
children. A run's spans are emitted when its ``run_end`` arrives.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from corral.exceptions import ConfigError
from corral.record import sinks
from corral.record.decisions import Denial, DenialReader
from corral.stores import Store, open_store
from corral.stores.base import Event, RunRecord

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "MAX_EVENTS_PER_RUN",
    "MAX_PENDING_RUNS",
    "TraceSink",
    "disable",
    "emit_run",
    "enable",
    "export_run",
]

log = logging.getLogger("corral")

#: Runs whose events are held until their ``run_end``; past it the oldest is emitted as is.
MAX_PENDING_RUNS = 1_000
#: Events held per run; later ones (but ``run_end``) are dropped and counted.
MAX_EVENTS_PER_RUN = 10_000

_INSTRUMENTATION = "corral"
#: ``error.type`` of a tool-call attempt that failed, by its outcome.
_TOOL_ERRORS = {
    "error": "tool_error",
    "timeout": "timeout",
    "invalid_output": "invalid_tool_output",
    "not_executed": "not_executed",
}
_MISSING = (
    "corral.record.tracing needs the OpenTelemetry API and SDK ({name} is missing): "
    "pip install 'corral[otel]'"
)


def _tracer(provider: TracerProvider | None) -> Tracer:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigError(_MISSING.format(name=exc.name or "opentelemetry")) from None
    from corral._version import __version__

    if provider is None:
        return trace.get_tracer(_INSTRUMENTATION, __version__)
    return provider.get_tracer(_INSTRUMENTATION, __version__)


class TraceSink:
    """An event sink that emits each run's spans when the run ends (see the module docstring)."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self._tracer = _tracer(tracer_provider)
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, list[Event]] = OrderedDict()
        self._dropped: dict[str, int] = {}

    def __call__(self, events: Sequence[Event]) -> None:
        ready: list[tuple[list[Event], int]] = []
        with self._lock:
            for event in events:
                held = self._pending.get(event.run_id)
                if held is None:
                    held = self._pending[event.run_id] = []
                    while len(self._pending) > MAX_PENDING_RUNS:
                        old_id, old = self._pending.popitem(last=False)
                        ready.append((old, self._dropped.pop(old_id, 0)))
                if event.kind == "run_end":
                    held.append(event)
                    del self._pending[event.run_id]
                    ready.append((held, self._dropped.pop(event.run_id, 0)))
                elif len(held) < MAX_EVENTS_PER_RUN:
                    held.append(event)
                else:
                    self._dropped[event.run_id] = self._dropped.get(event.run_id, 0) + 1
        for run_events, dropped in ready:
            emit_run(run_events, tracer=self._tracer, dropped=dropped)

    def flush(self) -> None:
        """Emit the spans of every run still pending, as they are (no ``run_end`` yet)."""
        with self._lock:
            pending, self._pending = self._pending, OrderedDict()
            dropped, self._dropped = self._dropped, {}
        for run_id, run_events in pending.items():
            emit_run(run_events, tracer=self._tracer, dropped=dropped.get(run_id, 0))


_installed: list[TraceSink] = []


def enable(tracer_provider: TracerProvider | None = None) -> TraceSink:
    """Emit spans for every run from now on, through ``tracer_provider`` (default: the
    global one, ``opentelemetry.trace.set_tracer_provider``)."""
    sink = TraceSink(tracer_provider)
    _installed.append(sink)
    sinks.add_sink(sink)
    return sink


def disable(sink: TraceSink | None = None) -> None:
    """Stop ``sink`` (default: every sink :func:`enable` installed), emitting what it holds."""
    chosen = [sink] if sink is not None else list(_installed)
    for s in chosen:
        sinks.remove_sink(s)
        if s in _installed:
            _installed.remove(s)
        s.flush()


def export_run(
    run_id: str,
    store: str | Store | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
) -> int:
    """Emit the spans of a stored run (default store: ``CORRAL_DB``, then the per-user
    store); returns how many spans were emitted.

    Raises :class:`~corral.exceptions.ConfigError` when there is no such run.
    """
    opened = open_store(store)
    record = opened.get_run(run_id)
    if record is None:
        raise ConfigError(f"no run {run_id!r} in the store")
    return emit_run(opened.events(run_id), record=record, tracer=_tracer(tracer_provider))


def emit_run(
    events: Sequence[Event],
    *,
    record: RunRecord | None = None,
    tracer: Tracer | None = None,
    tracer_provider: TracerProvider | None = None,
    dropped: int = 0,
) -> int:
    """Emit spans for one run's events (in order); ``record`` adds what only the stored run
    knows (tenant, agent, an ``interrupted`` status). Returns how many spans were emitted.

    A resumed run's events hold one ``run_start`` per segment: each segment is a trace.
    """
    if not events:
        return 0
    tracer = tracer or _tracer(tracer_provider)
    segments: list[list[Event]] = []
    for event in sorted(events, key=lambda e: e.seq):
        if event.kind == "run_start" or not segments:
            segments.append([])
        segments[-1].append(event)
    return sum(_emit_segment(seg, record, tracer, dropped) for seg in segments)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _span_times(event: Event) -> tuple[float, float]:
    seconds = event.data.get("seconds")
    took = float(seconds) if isinstance(seconds, int | float) and seconds > 0 else 0.0
    return event.at - took, event.at


def _set(attrs: dict[str, Any], key: str, value: Any) -> None:
    """Set an attribute OpenTelemetry can carry; ``None`` and empty values are left out."""
    if value is None or value == "" or isinstance(value, Mapping):
        return
    if isinstance(value, list | tuple):
        items = [str(v) for v in value if v is not None]
        if items:
            attrs[key] = items
        return
    attrs[key] = value if isinstance(value, bool | int | float | str) else str(value)


def _emit_segment(
    events: list[Event], record: RunRecord | None, tracer: Tracer, dropped: int
) -> int:
    """Emit one segment of a run as a trace: the run's span, a span per model and tool
    call under it, and its decisions as span events. Returns how many spans."""
    from opentelemetry import trace

    end_event = next((e for e in events if e.kind == "run_end"), None)
    root, run_end = _start_run_span(events, end_event, record, tracer, dropped)
    context = trace.set_span_in_context(root)
    emitted = 1
    tokens_in = tokens_out = 0
    reader = DenialReader()
    for event in events:
        denial = reader.read(event)
        if event.kind == "model_call":
            tokens_in += int(event.data.get("input_tokens") or 0)
            tokens_out += int(event.data.get("output_tokens") or 0)
            _chat_span(tracer, context, event)
            emitted += 1
        elif event.kind == "tool_call":
            _tool_span(tracer, context, event)
            emitted += 1
        _add_run_event(root, event, denial)
    root.set_attribute("gen_ai.usage.input_tokens", tokens_in)
    root.set_attribute("gen_ai.usage.output_tokens", tokens_out)
    if end_event is not None:
        _finish_run(root, end_event)
    else:
        _unfinished_run(root, record)
    root.end(end_time=_ns(run_end))
    return emitted


def _start_run_span(
    events: list[Event],
    end_event: Event | None,
    record: RunRecord | None,
    tracer: Tracer,
    dropped: int,
) -> tuple[Span, float]:
    """Start the run's span (``invoke_agent``) at the segment's first moment; returns it
    with the moment it ends."""
    from opentelemetry.trace import SpanKind

    run_id = events[0].run_id
    start_event = next((e for e in events if e.kind == "run_start"), None)
    info = start_event.data if start_event else {}
    agent = str(info.get("agent") or (record.agent if record else "") or "")
    tenant = str(info.get("tenant") or (record.tenant if record else "") or "")

    calls = [e for e in events if e.kind in ("model_call", "tool_call")]
    starts = [_span_times(e)[0] for e in calls] + [events[0].at]
    ends = [e.at for e in events]
    run_start = min(starts)
    run_end = max(ends)
    if end_event is None and record is not None and record.ended_at:
        run_end = max(run_end, record.ended_at)

    attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent"}
    _set(attrs, "gen_ai.agent.name", agent)
    _set(attrs, "gen_ai.conversation.id", run_id)
    _set(attrs, "corral.run_id", run_id)
    _set(attrs, "corral.tenant", tenant)
    _set(attrs, "corral.policy", info.get("policy"))
    _set(attrs, "corral.mode", info.get("mode"))
    if info.get("resumed"):
        attrs["corral.resumed"] = True
    if dropped:
        attrs["corral.events_dropped"] = dropped
    name = f"invoke_agent {agent}" if agent else "invoke_agent"
    root = tracer.start_span(
        name, kind=SpanKind.INTERNAL, attributes=attrs, start_time=_ns(run_start)
    )
    return root, run_end


def _add_run_event(root: Span, event: Event, denial: Denial | None) -> None:
    """Record a decision (a denial, a would-be stop, an approval, a skip, a warning) as an
    event of the run's span."""
    data = event.data
    if denial is not None:
        ev: dict[str, Any] = {
            "corral.decision": "would_stop" if denial.observed else "denied",
            "corral.guard": denial.guard,
            "corral.reason": denial.reason,
        }
        _set(ev, "gen_ai.tool.name", denial.tool)
        _set(ev, "corral.why", denial.why)
        root.add_event(
            "corral.would_stop" if denial.observed else "corral.denied",
            attributes=ev,
            timestamp=_ns(event.at),
        )
    elif event.kind in ("approval", "skipped", "step", "warning", "interrupted"):
        ev = {}
        for key, value in data.items():
            _set(ev, f"corral.{key}", value)
        if event.kind == "approval":
            ev["corral.decision"] = "approved"
            _set(ev, "gen_ai.tool.name", data.get("tool"))
        root.add_event(f"corral.{event.kind}", attributes=ev, timestamp=_ns(event.at))


def _unfinished_run(root: Span, record: RunRecord | None) -> None:
    """Mark a segment with no ``run_end``: the stored run's status (``interrupted`` when its
    process died), or ``incomplete``."""
    from opentelemetry.trace import Status, StatusCode

    status = record.status if record is not None else "incomplete"
    root.set_attribute("corral.status", status)
    if status == "interrupted":
        root.set_status(Status(StatusCode.ERROR, "the run's process died"))
        root.set_attribute("error.type", "interrupted")


def _finish_run(root: Span, end: Event) -> None:
    from opentelemetry.trace import Status, StatusCode

    data = end.data
    status = str(data.get("status") or "")
    reason = str(data.get("stop_reason") or "")
    attrs: dict[str, Any] = {}
    _set(attrs, "corral.status", status)
    _set(attrs, "corral.stop_reason", reason)
    stop = data.get("stop")
    text = str(stop.get("text") or reason) if isinstance(stop, Mapping) else reason
    _set(attrs, "corral.stop", text)
    usage = data.get("usage")
    if isinstance(usage, Mapping):
        _set(attrs, "corral.usd", usage.get("usd"))
        _set(attrs, "corral.steps", usage.get("steps"))
        _set(attrs, "corral.tool_calls", usage.get("tool_calls"))
    root.set_attributes(attrs)
    ev: dict[str, Any] = {"corral.stop_reason": reason}
    _set(ev, "corral.stop", text)
    if isinstance(stop, Mapping):
        _set(ev, "corral.message", stop.get("message"))
        _set(ev, "gen_ai.tool.name", stop.get("tool"))
    root.add_event("corral.stop", attributes=ev, timestamp=_ns(end.at))
    if status == "error":
        root.set_attribute("error.type", reason)
        root.set_status(Status(StatusCode.ERROR, text))


def _chat_span(tracer: Tracer, context: Any, event: Event) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    data = event.data
    model = str(data.get("model") or "")
    start, end = _span_times(event)
    attrs: dict[str, Any] = {"gen_ai.operation.name": "chat"}
    _set(attrs, "gen_ai.provider.name", data.get("provider"))
    _set(attrs, "gen_ai.request.model", model)
    _set(attrs, "gen_ai.request.max_tokens", data.get("max_tokens"))
    _set(attrs, "gen_ai.usage.input_tokens", data.get("input_tokens"))
    _set(attrs, "gen_ai.usage.output_tokens", data.get("output_tokens"))
    reason = data.get("finish_reason")
    if reason:
        attrs["gen_ai.response.finish_reasons"] = [str(reason)]
    _set(attrs, "corral.outcome", data.get("outcome"))
    _set(attrs, "corral.usd", data.get("usd"))
    _set(attrs, "corral.tool_calls", data.get("tool_calls"))
    span = tracer.start_span(
        f"chat {model}" if model else "chat",
        context=context,
        kind=SpanKind.CLIENT,
        attributes=attrs,
        start_time=_ns(start),
    )
    if data.get("outcome") == "error":
        span.set_attribute("error.type", "model_error")
        span.set_status(Status(StatusCode.ERROR, str(data.get("error") or "")))
    span.end(end_time=_ns(end))


def _tool_span(tracer: Tracer, context: Any, event: Event) -> None:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    data = event.data
    tool = str(data.get("tool") or "")
    outcome = str(data.get("outcome") or "")
    start, end = _span_times(event)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.type": "function",
    }
    _set(attrs, "gen_ai.tool.name", tool)
    _set(attrs, "gen_ai.tool.call.id", data.get("call_id"))
    _set(attrs, "corral.outcome", outcome)
    _set(attrs, "corral.attempt", data.get("attempt"))
    _set(attrs, "corral.usd", data.get("usd"))
    _set(attrs, "corral.args_digest", data.get("args_digest"))
    given = data.get("attributes")  # the caller's (Run.authorize's attributes=): mcp.*
    if isinstance(given, Mapping):
        for name, value in given.items():
            if isinstance(name, str) and not name.startswith(("gen_ai.", "corral.")):
                _set(attrs, name, value)
    span = tracer.start_span(
        f"execute_tool {tool}",
        context=context,
        kind=SpanKind.INTERNAL,
        attributes=attrs,
        start_time=_ns(start),
    )
    error_type = _TOOL_ERRORS.get(outcome)
    if error_type is not None:
        span.set_attribute("error.type", error_type)
        message = data.get("error") or data.get("problem") or outcome
        span.set_status(Status(StatusCode.ERROR, str(message)))
    span.end(end_time=_ns(end))
