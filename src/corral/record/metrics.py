"""Prometheus metrics of governed runs, fed by an event sink.

>>> from prometheus_client import CollectorRegistry
>>> from corral.record import metrics
>>> m = metrics.enable(registry=CollectorRegistry())
>>> "corral_runs_total" in metrics.render(m.registry)
True
>>> metrics.disable(m)

:func:`enable` installs a sink (:func:`corral.record.sinks.add_sink`) that turns every
run's trace events into the metrics below, on corral's own
:class:`~prometheus_client.CollectorRegistry` unless given another (pass
``prometheus_client.REGISTRY`` to serve them beside your own). :func:`render`
gives the text exposition (a ``str``; serve it as :data:`CONTENT_TYPE`);
:func:`start_http_server` serves it.

=========================================  ==============================================
``corral_runs_total{stop_reason,status}``  runs ended, by stop reason and status
``corral_tool_calls_total{tool,outcome}``  tool-call attempts that reached execution or
                                           were served without it: ``ok``, ``error``,
                                           ``timeout``, ``invalid_output``,
                                           ``not_executed``, ``cached``, ``replayed``
``corral_denials_total{guard,tool}``       refusals, by the guard that decided
``corral_would_stop_total{guard,tool}``    observe mode: refusals that would have happened
``corral_tool_calls_per_run``              histogram: tool calls a run used
``corral_tokens_per_request``              histogram: input + output tokens of a model call
``corral_tool_latency_seconds{tool}``      histogram: one tool-call attempt
``corral_model_latency_seconds{model}``    histogram: one model call
``corral_spend_usd_total{tenant}``         USD spent (models and tools)
``corral_model_overrun_tokens_total``      tokens a provider billed above the reservation
=========================================  ==============================================

The figures ``monitoring.track`` names (:mod:`corral.record.figures`), one value per run
when it ends, for runs whose policy tracks them (and keeps ``monitoring.metrics`` on), by
``tenant`` and ``agent``: what ``corral drift`` compares, for dashboards and alerts.

==================================================  ===========================================
``corral_run_tool_calls{tenant,agent}``             histogram: ``tool_calls_per_run``
``corral_run_tokens_per_request{tenant,agent}``     histogram: ``tokens_per_request``
``corral_run_stop_reasons_total{tenant,agent,``     ``stop_reason``: runs ended, by stop reason
``stop_reason}``
``corral_run_tool_latency_p95_seconds{tenant,``     histogram: ``latency_p95``, the run's own
``agent}``
``corral_run_spend_usd{tenant,agent}``              histogram: ``spend_per_run``
==================================================  ===========================================

A resumed run's figures are those of its first segment here (its later segments' ends
are not counted again); ``corral drift`` reads the whole run from the store.

Guards: ``allowlist``, ``arguments``, ``constraints``, ``idempotency``,
``approval``, ``kill_switch``, ``budget``, ``loop``, ``degrade``, ``output``,
``control_plane``. A refusal that concerns the run or a model call, not a tool,
has ``tool=""``. p95 latency: ``histogram_quantile(0.95, sum by (le, tool)
(rate(corral_tool_latency_seconds_bucket[5m])))``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import start_http_server as _start_http_server

from corral.record import figures, sinks
from corral.record.decisions import DenialReader
from corral.stores.base import Event
from corral.stores.figures import RunFigures

__all__ = [
    "CONTENT_TYPE",
    "MODEL_LATENCY_BUCKETS",
    "SPEND_BUCKETS",
    "TOKEN_BUCKETS",
    "TOOL_CALLS_BUCKETS",
    "TOOL_LATENCY_BUCKETS",
    "Metrics",
    "default_registry",
    "disable",
    "enable",
    "render",
    "start_http_server",
]

#: Tool-call latency, seconds: fine below a second (reads, caches), coarse up to the
#: longest timeouts.
TOOL_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
#: Model-call latency, seconds.
MODEL_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
#: Input + output tokens of one model call: roughly doubling up to long contexts.
TOKEN_BUCKETS = (
    100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000,
)  # fmt: skip
#: Tool calls per run: every value up to the default budget of 15, then coarser.
TOOL_CALLS_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 100)

#: USD a run spent: from a fraction of a cent to a runaway run.
SPEND_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0)

#: The media type of :func:`render`'s text: Prometheus's text exposition format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The most runs in flight whose bookkeeping (tenant, spend so far) is kept.
MAX_RUNS = 10_000


@dataclass
class _RunState:
    tenant: str = ""
    agent: str = ""
    resumed: bool = False
    counted_usd: Decimal = Decimal(0)
    #: The figures its policy tracks, and what they are computed from.
    track: tuple[str, ...] = ()
    requests: int = 0
    tokens: int = 0
    seconds: list[float] = field(default_factory=list)


@dataclass
class _Ended:
    usd: Decimal = Decimal(0)
    overrun_tokens: int = 0


class Metrics:
    """The metrics on one registry, and the sink that feeds them (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = r = registry
        self.runs = Counter(
            "corral_runs", "Runs ended, by stop reason and status.", ["stop_reason", "status"],
            registry=r,
        )  # fmt: skip
        self.tool_calls = Counter(
            "corral_tool_calls", "Tool-call attempts, by tool and outcome.", ["tool", "outcome"],
            registry=r,
        )  # fmt: skip
        self.denials = Counter(
            "corral_denials", "Refusals, by the guard that decided.", ["guard", "tool"],
            registry=r,
        )  # fmt: skip
        self.would_stop = Counter(
            "corral_would_stop",
            "Observe mode: refusals that would have happened, by guard.",
            ["guard", "tool"],
            registry=r,
        )
        self.tool_calls_per_run = Histogram(
            "corral_tool_calls_per_run", "Tool calls a run used.",
            buckets=TOOL_CALLS_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens_per_request = Histogram(
            "corral_tokens_per_request", "Input plus output tokens of one model call.",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.tool_latency = Histogram(
            "corral_tool_latency_seconds", "Latency of one tool-call attempt.", ["tool"],
            buckets=TOOL_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_latency = Histogram(
            "corral_model_latency_seconds", "Latency of one model call.", ["model"],
            buckets=MODEL_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.spend = Counter(
            "corral_spend_usd", "USD spent on models and tools, by tenant.", ["tenant"],
            registry=r,
        )  # fmt: skip
        self.overrun_tokens = Counter(
            "corral_model_overrun_tokens",
            "Tokens a provider billed above what was reserved (it ignored max_tokens).",
            registry=r,
        )
        self._per_run(r)
        self._lock = threading.Lock()
        self._runs: OrderedDict[str, _RunState] = OrderedDict()
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        self._denials = DenialReader(max_runs=MAX_RUNS)

    def _per_run(self, r: CollectorRegistry) -> None:
        who = ["tenant", "agent"]
        self.run_tool_calls = Histogram(
            "corral_run_tool_calls", "Tool calls of a run whose policy tracks them.", who,
            buckets=TOOL_CALLS_BUCKETS, registry=r,
        )  # fmt: skip
        self.run_tokens_per_request = Histogram(
            "corral_run_tokens_per_request",
            "Tokens per model call of a run whose policy tracks them.", who,
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.run_stop_reasons = Counter(
            "corral_run_stop_reasons", "Runs whose policy tracks stop reasons, ended.",
            [*who, "stop_reason"], registry=r,
        )  # fmt: skip
        self.run_latency_p95 = Histogram(
            "corral_run_tool_latency_p95_seconds",
            "The p95 tool-call latency of a run whose policy tracks it.", who,
            buckets=TOOL_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.run_spend = Histogram(
            "corral_run_spend_usd", "USD a run whose policy tracks it spent.", who,
            buckets=SPEND_BUCKETS, registry=r,
        )  # fmt: skip

    # The sink: called with each batch of events the store accepted.
    def __call__(self, events: Sequence[Event]) -> None:
        with self._lock:
            for event in events:
                self.observe(event)

    def observe(self, event: Event) -> None:
        """Count one event. Unlocked: from several threads, call the instance (the sink)."""
        data = event.data
        kind = event.kind
        denial = self._denials.read(event)
        if denial is not None:
            counter = self.would_stop if denial.observed else self.denials
            counter.labels(guard=denial.guard, tool=denial.tool).inc()
        if kind == "run_start":
            self._start(event)
        elif kind == "model_call":
            self._model_call(event.run_id, data)
        elif kind == "tool_call":
            self._tool_call(event.run_id, data)
        elif kind == "run_end":
            self._end(event.run_id, data)

    def _state(self, run_id: str) -> _RunState:
        state = self._runs.get(run_id)
        if state is None:
            state = self._runs[run_id] = _RunState()
            while len(self._runs) > MAX_RUNS:
                self._runs.popitem(last=False)
        return state

    def _start(self, event: Event) -> None:
        state = self._state(event.run_id)
        state.tenant = str(event.data.get("tenant") or "")
        state.agent = str(event.data.get("agent") or "")
        state.resumed = bool(event.data.get("resumed"))
        track = event.data.get("track")
        if isinstance(track, list) and not state.resumed:
            state.track = tuple(name for name in track if name in figures.FIGURES)

    def _spend(self, run_id: str, usd: Decimal) -> None:
        if usd > 0:
            state = self._state(run_id)
            state.counted_usd += usd
            self.spend.labels(tenant=state.tenant).inc(float(usd))

    def _model_call(self, run_id: str, data: Mapping[str, Any]) -> None:
        seconds = _number(data.get("seconds"))
        if seconds is not None:
            self.model_latency.labels(model=str(data.get("model") or "")).observe(seconds)
        tokens_in, tokens_out = data.get("input_tokens"), data.get("output_tokens")
        if data.get("outcome") == "ok" and isinstance(tokens_in, int | float):
            tokens = tokens_in + (_number(tokens_out) or 0)
            self.tokens_per_request.observe(tokens)
            state = self._runs.get(run_id)
            if state is not None and state.track:
                state.requests += 1
                state.tokens += int(tokens)
        self._spend(run_id, _usd(data.get("usd")))

    def _tool_call(self, run_id: str, data: Mapping[str, Any]) -> None:
        tool = str(data.get("tool") or "")
        self.tool_calls.labels(tool=tool, outcome=str(data.get("outcome") or "")).inc()
        seconds = _number(data.get("seconds"))
        if seconds is not None:
            self.tool_latency.labels(tool=tool).observe(seconds)
            state = self._runs.get(run_id)
            if state is not None and state.track:
                state.seconds.append(seconds)
        self._spend(run_id, _usd(data.get("usd")))

    def _end(self, run_id: str, data: Mapping[str, Any]) -> None:
        state = self._runs.pop(run_id, None) or _RunState()
        self.runs.labels(
            stop_reason=str(data.get("stop_reason") or ""), status=str(data.get("status") or "")
        ).inc()
        usage = data.get("usage")
        usage = usage if isinstance(usage, Mapping) else {}
        self.tool_calls_per_run.observe(_number(usage.get("tool_calls")) or 0)
        # Usage in run_end covers the whole run, earlier segments of a resumed run included:
        # count only what this segment added, when the earlier end was seen here.
        before = self._ended.pop(run_id, None)
        total_usd = _usd(usage.get("usd"))
        overrun = int(_number(usage.get("overrun_tokens")) or 0)
        if before is not None or not state.resumed:  # else: what the events showed only
            prior = before or _Ended()
            # Spend the events did not show (a failed tool call charged with charge_on_error).
            missing = total_usd - prior.usd - state.counted_usd
            if missing > 0:
                self.spend.labels(tenant=state.tenant).inc(float(missing))
            if overrun > prior.overrun_tokens:
                self.overrun_tokens.inc(overrun - prior.overrun_tokens)
        self._ended[run_id] = _Ended(usd=total_usd, overrun_tokens=overrun)
        while len(self._ended) > MAX_RUNS:
            self._ended.popitem(last=False)
        if state.track:
            self._figures(state, data, usage, total_usd)

    def _figures(
        self, state: _RunState, data: Mapping[str, Any], usage: Mapping[str, Any], usd: Decimal
    ) -> None:
        """The tracked figures of a run that ended (:mod:`corral.record.figures`)."""
        run = RunFigures(
            run_id="",
            status=str(data.get("status") or ""),
            stop_reason=str(data.get("stop_reason") or "") or None,
            tool_calls=int(_number(usage.get("tool_calls")) or 0),
            usd=usd,
            requests=state.requests,
            tokens=state.tokens,
            tool_seconds=tuple(state.seconds),
        )
        who = {"tenant": state.tenant, "agent": state.agent}
        histograms = {
            "tool_calls_per_run": self.run_tool_calls,
            "tokens_per_request": self.run_tokens_per_request,
            "latency_p95": self.run_latency_p95,
            "spend_per_run": self.run_spend,
        }
        for name in state.track:
            if name == "stop_reason":
                self.run_stop_reasons.labels(**who, stop_reason=figures.stop_reason(run)).inc()
                continue
            value = figures.value(name, run)
            if value is not None:
                histograms[name].labels(**who).observe(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _usd(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    try:
        usd = Decimal(str(value))
    except InvalidOperation:
        return Decimal(0)
    return usd if usd.is_finite() else Decimal(0)


_lock = threading.Lock()
_default: CollectorRegistry | None = None
_installed: dict[int, Metrics] = {}


def default_registry() -> CollectorRegistry:
    """corral's own registry (one per process), used when no registry is given."""
    global _default
    with _lock:
        if _default is None:
            _default = CollectorRegistry()
        return _default


def enable(registry: CollectorRegistry | None = None) -> Metrics:
    """Count every run's events on ``registry`` (default :func:`default_registry`).

    Idempotent per registry: enabling twice, or again after :func:`disable`, returns the
    same :class:`Metrics` (a registry holds each metric once; their values go on).
    """
    registry = registry if registry is not None else default_registry()
    with _lock:
        # Kept on the registry itself: it lives as long as the metrics registered on it.
        metrics = getattr(registry, "_corral_metrics", None)
        if not isinstance(metrics, Metrics):
            metrics = Metrics(registry)
            setattr(registry, "_corral_metrics", metrics)  # noqa: B010 (not a declared field)
        _installed[id(registry)] = metrics
    sinks.add_sink(metrics)
    return metrics


def disable(metrics: Metrics | None = None) -> None:
    """Stop feeding ``metrics`` (default: every registry enabled); their values stay."""
    with _lock:
        chosen = [metrics] if metrics is not None else list(_installed.values())
        for m in chosen:
            _installed.pop(id(m.registry), None)
    for m in chosen:
        sinks.remove_sink(m)


def render(registry: CollectorRegistry | None = None) -> str:
    """The text exposition of ``registry`` (default :func:`default_registry`), for a
    ``/metrics`` endpoint: serve it with the media type :data:`CONTENT_TYPE`."""
    body = generate_latest(registry if registry is not None else default_registry())
    return body.decode("utf-8")


def start_http_server(
    port: int, addr: str = "0.0.0.0", *, registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Enable the metrics and serve them at ``http://addr:port/metrics`` from a daemon thread.

    Returns prometheus_client's server and thread (``server.shutdown()`` stops it;
    port 0 picks a free port, ``server.server_port`` tells which).
    """
    metrics = enable(registry)
    return _start_http_server(port, addr=addr, registry=metrics.registry)
