"""What ``Run`` and ``AsyncRun`` share (:class:`RunBase`): opening the run's state (the
store, the tool registry), its identity and usage, steps, the end of the run and its
result, the tool specs on offer in the formats models take, and the model-call ticket.

Imports the gateway below it; ``loop/run.py`` holds the two faces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

from corral._safe import error_text
from corral.budgets.meter import Usage
from corral.clock import Clock
from corral.controls import breaker
from corral.exceptions import ConfigError, Stop, StoreError, ToolRejected
from corral.gateway import lifecycle
from corral.gateway._escapes import CANCELLATION
from corral.gateway.direct import Plan
from corral.gateway.effective import Effective
from corral.gateway.guards import killswitch
from corral.gateway.lifecycle import status_of
from corral.gateway.model_turn import ONE_STEP, plan
from corral.gateway.services import Services
from corral.loop.tickets import ModelCall, _NamedModel
from corral.models.base import Model, input_token_bound, wire_name
from corral.policy.schema import Policy
from corral.result import CallInfo, RunResult
from corral.secrets import SecretProvider
from corral.stops import StopInfo, StopReason, money
from corral.stores import Store, default_url, display_url, open_store
from corral.stores.unavailable import UnavailableStore
from corral.tools import Tool, as_registry, described_tool

log = logging.getLogger("corral")

SpecFormat = Literal["openai", "anthropic", "neutral"]
_FORMATS = ("openai", "anthropic", "neutral")


#: What only a run governed here takes (``server=`` refuses them).
_LOCAL_ONLY = frozenset({"store", "clock", "approver", "credentials", "services", "run_id"})

#: The longest idempotency key or call id accepted (they are stored and audited).
MAX_KEY_CHARS = 512


def text_or_none(what: str, value: Any) -> str | None:
    """A caller's key or call id: text of a bounded length, or ``None`` (a developer
    mistake otherwise, not something to coerce)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string, got {type(value).__name__}")
    text: str = str.__str__(value)  # a str subclass is keyed by its text, nothing else
    if len(text) > MAX_KEY_CHARS:
        raise ConfigError(f"{what} must be at most {MAX_KEY_CHARS} characters, got {len(text)}")
    return text


def _open(store: str | Store | None) -> Store:
    """The store a run names; one that cannot be opened becomes a stand-in that fails every
    call, so the run fails closed inside (``control_plane_unavailable``, saying why) rather
    than its constructor raising. A URL no store could ever mean stays a ConfigError."""
    try:
        return open_store(store)
    except ConfigError:
        raise
    except Exception as exc:
        where = display_url(store if isinstance(store, str) else default_url())
        why = str(exc) if isinstance(exc, StoreError) else error_text(exc)
        return cast(Store, UnavailableStore(f"cannot open the store {where}: {why}"))


def _registry(
    policy: Policy,
    tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None,
    *,
    described: bool,
) -> dict[str, Tool]:
    """The run's tools by name: those given, and (``described``) a tool for each allowed
    name that the policy alone describes (``tools.specs.<name>.args_schema``) and no code
    provides, for the caller to authorize, execute and report."""
    registry = as_registry(tools)
    if described:
        for name in policy.tools.allow:
            spec = policy.spec(name)
            if name not in registry and spec is not None and spec.args_schema is not None:
                registry[name] = described_tool(name, spec)
    return registry


#: Stops logged as warnings: governance could not work (the store), or the agent's own
#: code failed. Every other end is a bound or a decision working as meant (INFO).
_LOUD_STOPS = frozenset({"control_plane_unavailable", "agent_error"})


def _log_end(result: RunResult) -> None:
    """One line on the ``corral`` logger as a run ends (never per call)."""
    level = logging.WARNING if result.stop_reason in _LOUD_STOPS else logging.INFO
    if not log.isEnabledFor(level):
        return
    stop = result.stop
    if stop is None:
        what = "ended ok"
    else:
        what = f"stopped {stop}" + (f": {stop.message}" if stop.message else "")
    u = result.usage
    log.log(
        level,
        "run %s %s (%s, %s, $%s, %.2f s)",
        result.run_id,
        what,
        _count(u.steps, "step"),
        _count(u.tool_calls, "tool call"),
        money(u.usd),
        u.active_seconds,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class RunBase:
    #: Whether the run registers the tools the policy alone describes (not in the bounded
    #: loop, which could only refuse them).
    _describes = True

    def __new__(cls, *args: Any, server: str | None = None, **kwargs: Any) -> Any:
        """A run governed here; with ``server=``, one governed by that ``corral serve``
        (:mod:`corral.client`: the same interface, your tools still run here)."""
        if server is None:
            return super().__new__(cls)
        from corral.client import AsyncRun as RemoteAsyncRun
        from corral.client import Run as RemoteRun

        remote = RemoteAsyncRun if getattr(cls, "_remote_async", False) else RemoteRun
        local = sorted(set(kwargs) & _LOCAL_ONLY)
        if local:
            raise ConfigError(
                f"{', '.join(local)}: not with server= (the server has the store, the clock, "
                "the approvals and the credentials)"
            )
        return remote(*args, server=server, **kwargs)

    def __init__(
        self,
        policy: Policy,
        *,
        tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None = None,
        store: str | Store | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        run_id: str | None = None,
        task: str = "",
        clock: Clock | None = None,
        approver: Callable[..., Any] | None = None,
        credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
        services: Services | None = None,
        server: None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a corral.Policy, got {type(policy).__name__}")
        self._core = lifecycle.open_run(
            policy,
            tools=_registry(policy, tools, described=self._describes),
            store=_open(store),
            clock=clock,
            tenant=tenant,
            agent=agent,
            run_id=run_id,
            task=task,
            approver=approver,
            credentials=credentials,
            services=services,
        )
        self._result: RunResult | None = None
        self._wire: dict[str, str] = {}
        self._plans: dict[str, Plan | None] = {}  # AsyncRun's direct path, tool by tool

    # -- identity and state ------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._core.id

    @property
    def usage(self) -> Usage:
        """What the run has used so far."""
        return self._core.budget.usage()

    @property
    def last_call(self) -> CallInfo | None:
        """How the last tool call was served: executed, from the read cache, or replayed
        from an earlier outcome of the same idempotency key (nothing ran again)."""
        last = self._core.last_call
        if last is None:
            return None
        return CallInfo(outcome=last[0], tool=last[1], idempotency_key=last[2])

    @property
    def result(self) -> RunResult:
        """The result, once the run has ended (after the ``with`` block or ``finish``)."""
        if self._result is None:
            raise ConfigError("the run has not ended yet: leave the `with` block or call finish()")
        return self._result

    # -- steps, finish, cancel --------------------------------------------------------
    def _step(self) -> None:
        core = self._core
        core.ensure_running()
        core.time.check()
        hold = core.budget.reserve(ONE_STEP)
        core.budget.settle(hold, ONE_STEP)
        core.events.add("step", n=core.budget.meter.usage().steps)

    def _finish(self, answer: Any) -> RunResult:
        if self._result is not None:
            return self._result
        self._core.ensure_running()
        text = None if answer is None else (answer if isinstance(answer, str) else str(answer))
        self._core.answer = text
        return self._end("ok", answer=text)

    def cancel(self) -> None:
        """Ask the run to stop: the next step or call raises ``cancelled``, and a run that
        ends without one ends ``cancelled``. Safe to call from another thread."""
        self._core.cancelled = True

    def _end(
        self, reason: StopReason, *, answer: str | None = None, error: str | None = None
    ) -> RunResult:
        core = self._core
        if self._result is not None:
            return self._result
        core.finished = True
        info = core.stop if reason != "ok" else None
        # The answer and the partial are the agent's text: scrubbed of the run's secrets
        # like a tool's output, for the caller and the stored run alike.
        answer, partial = core.scrub_text(answer), core.scrub_text(core.partial or core.last_text)
        if error is not None:
            error = core.redactor.text(error)
        unrecorded = lifecycle.close(core, reason, answer=answer)
        if unrecorded is not None:
            # Fail closed, and say so: a run whose end is not in the audit log did not end ok.
            error = unrecorded if error is None else f"{error}; {unrecorded}"
            if reason == "ok":
                reason, partial, answer = "control_plane_unavailable", answer, None
                info = StopInfo(reason=reason, detail="store", message=unrecorded, retryable=True)
                core.record_stop(info)
        self._result = RunResult(
            run_id=core.id,
            status=status_of(reason),
            stop_reason=reason,
            answer=answer,
            partial=None if reason == "ok" else partial,
            usage=core.budget.usage(),
            stop=info,
            would_stop=tuple(core.would_stop),
            error=error,
        )
        _log_end(self._result)
        return self._result

    def _stopped(self, stop: Stop) -> RunResult:
        self._core.record_stop(stop.info)
        first = self._core.stop or stop.info  # the first stop of the run wins
        return self._end(first.reason)

    # -- tools on offer --------------------------------------------------------------
    def tool_specs(self, format: SpecFormat = "openai") -> list[dict[str, Any]]:
        """Specs of the tools on offer now: allowed, registered (tools described only by the
        policy included), not kill-switched or degraded.

        ``openai`` and ``anthropic`` formats use wire-safe names (dots become ``__``);
        map a name the model sends back with :meth:`tool_name`. Raises
        ``control_plane_unavailable`` when the kill switch or degrade state cannot be read.
        """
        if format not in _FORMATS:
            raise ConfigError(f"unknown tool spec format {format!r} (openai, anthropic, neutral)")
        core = self._core
        out: list[dict[str, Any]] = []
        for name, eff in self._on_offer():
            spec = eff.tool.spec()
            policy_spec = core.policy.spec(name)
            if policy_spec is not None and policy_spec.description is not None:
                spec["description"] = policy_spec.description  # the operator's words win
            if format == "neutral":
                out.append(spec)
                continue
            wire = wire_name(name)
            self._wire[wire] = name
            if format == "openai":
                function = {
                    "name": wire,
                    "description": spec["description"],
                    "parameters": spec["parameters"],
                }
                out.append({"type": "function", "function": function})
            else:
                out.append(
                    {
                        "name": wire,
                        "description": spec["description"],
                        "input_schema": spec["parameters"],
                    }
                )
        return out

    def _on_offer(self) -> list[tuple[str, Effective]]:
        """The tools on offer now, by name (sorted), as :meth:`tool_specs` lists them:
        allowed, registered, matching their pins, neither kill-switched nor degraded (the
        switches read once for all of them). Frameworks' adapters filter the tools of a
        request with it, without building specs."""
        core = self._core
        switches = None
        out = []
        for name in sorted(core.tools):
            if name not in core.allowed or name in core.unpinned:
                continue  # a tool whose definition is not its pin is hidden too
            eff = core.effective(name)
            if switches is None:  # read once, and only when a tool is left to judge
                switches = killswitch.active(core)
            if killswitch.blocking_among(switches, core, name, eff) is not None:
                continue
            if breaker.read(core, eff.breaker).state == "open":
                continue
            out.append((name, eff))
        return out

    def tool_name(self, wire: str) -> str:
        """The tool name behind a wire name from :meth:`tool_specs` (others pass unchanged)."""
        return self._wire.get(wire, wire)

    # -- wrapped model calls ---------------------------------------------------------
    def model_call(
        self,
        *,
        model: str | Model,
        messages: Sequence[Mapping[str, Any]] = (),
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
        input_tokens: int | None = None,
        provider: str | None = None,
    ) -> ModelCall:
        """Reserve a model call of your own (a step): kill switch, tokens and USD, before it.

        The input bound is computed from ``messages`` and ``tools`` (or given as
        ``input_tokens``); the price comes from ``models.prices``, else from the
        model object's ``price``. ``provider`` (``openai``, ``anthropic``, ...) names the
        API for traces (``gen_ai.provider.name``) when ``model`` is a name. Use it as
        ``with run.model_call(...) as mc:`` (``async with`` in async code), send
        ``mc.max_tokens``, then ``mc.settle``.
        """
        core = self._core
        core.ensure_running()
        core.time.check()
        killswitch.check(core, None, None)
        target = _NamedModel(model, None, provider) if isinstance(model, str) else model
        bound = input_tokens if input_tokens is not None else input_token_bound(messages, tools)
        clamped, charge = plan(core, target, bound, max_tokens)
        hold = core.budget.reserve(charge)
        return ModelCall(core, hold, clamped, target)

    # -- exit semantics --------------------------------------------------------------
    def _exit(self, exc: BaseException | None) -> bool:
        core = self._core
        if self._result is not None:
            return False  # already ended (finish): whatever happened after is the caller's
        if exc is None:
            if core.stop is not None:
                self._end(core.stop.reason)
            elif core.cancelled:
                self._stopped(Stop("cancelled", "run", message="the run was cancelled"))
            else:
                self._end("ok", answer=core.answer)
            return False
        if isinstance(exc, Stop):
            owner = exc.run_id
            if owner in (None, core.id):
                self._stopped(exc)
                return True
            self._fail_agent(exc)
            return False
        if isinstance(exc, ToolRejected):
            # The shape of the gateway's own stops (stops.StopInfo): detail names the tool,
            # extra["why"] the check that refused.
            extra = {"why": exc.detail} if exc.detail else None
            self._stopped(
                Stop(exc.reason, exc.tool, tool=exc.tool, message=exc.message, extra=extra)
            )
            return True
        if isinstance(exc, CANCELLATION):
            self._stopped(Stop("cancelled", "run", message=type(exc).__name__))
            return False
        self._fail_agent(exc)
        return False

    def _fail_agent(self, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        info = StopInfo(reason="agent_error", detail=type(exc).__name__, message=str(exc))
        self._core.record_stop(info)
        first = self._core.stop or info  # a stop raised before the exception still wins
        self._end(first.reason, error=text)
