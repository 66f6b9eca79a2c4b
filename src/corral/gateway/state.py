"""The state of one governed run, shared by the gateway, the loop and ``Run``: who runs it
(ids, tenant, agent), under what (policy, tools, store, clock, secrets), its stop, and its
parts — the event log (:mod:`~corral.gateway.events`), its time
(:mod:`~corral.gateway.deadline`) and its budgets (:mod:`~corral.gateway.spend`). A run
state is made by :func:`corral.gateway.lifecycle.open_run`, which also loads a resumed run
and records the start in the store; the end is :func:`corral.gateway.lifecycle.close`.

Nothing here does I/O beyond the store: waiting (for a tool, a model or an
approval) is done by the sync or async driver in ``gateway/drivers.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from corral.budgets.meter import Limits, Usage, limits_from_policy
from corral.clock import DEADLINE, SYSTEM_CLOCK, Clock
from corral.controls.breaker import cache_for as breaker_cache_for
from corral.exceptions import ConfigError, Stop, StoreError, StoreGone, ToolRejected
from corral.gateway.canonical import args_digest, canonical
from corral.gateway.deadline import RunTime
from corral.gateway.effective import DEFAULT_TOOL_TIMEOUT, Effective, effective
from corral.gateway.events import EventLog
from corral.gateway.pins import unpinned
from corral.gateway.services import DEFAULT as DEFAULT_SERVICES
from corral.gateway.services import Services
from corral.gateway.spend import BACKSTOP, RunBudget
from corral.policy.schema import Guard, Policy
from corral.record import redact
from corral.record.recording import Recorder
from corral.result import CallOutcome
from corral.secrets import Credentials, SecretProvider
from corral.stops import StopInfo
from corral.stores.base import Store
from corral.tools import Tool

__all__ = [
    "BACKSTOP",
    "DEFAULT_TOOL_TIMEOUT",
    "GAVE_UP",
    "Effective",
    "RunState",
    "args_digest",
    "canonical",
    "new_run_id",
]

T = TypeVar("T")

#: What a store call past the run's deadline says when the store already gave no answer.
GAVE_UP = "not tried: the store gave no answer by the run's deadline"


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex[:20]


class RunState:
    """One run's identity, settings, stop and parts (events, time, budgets)."""

    def __init__(
        self,
        policy: Policy,
        *,
        tools: Mapping[str, Tool],
        store: Store,
        clock: Clock | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        run_id: str | None = None,
        task: str = "",
        approver: Callable[..., Any] | None = None,
        credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
        services: Services | None = None,
    ) -> None:
        self.policy = policy
        # What the run shares with the process: sinks, breaker tally, kill-switch caches,
        # lease renewal (gateway/services.py).
        self.services = DEFAULT_SERVICES if services is None else services
        # The kill-switch cache of the run's store (guards/killswitch.py reads it per call).
        self.switch_cache = self.services.switches.cache_for(store)
        self.clock = clock or SYSTEM_CLOCK
        # The breakers read closed lately, when the run may rely on them (controls/breaker.py).
        self.breaker_cache = breaker_cache_for(store, self.clock, self.services.breakers)
        self.tools = dict(tools)
        self.store = store
        self.tenant = tenant
        self.agent = agent
        self.approver = approver
        self.task = task
        self.id = run_id or new_run_id()
        self.started_at = time.time()
        # Secrets never reach the trace or the audit log: every event is scrubbed of the
        # credentials' values (given, or resolved from a provider before the tool they are
        # for runs), secret-named keys and credential-looking text (redact.py).
        self.redactor = redact.redactor(policy.redact.keys, policy.redact.patterns)
        self.credentials = Credentials(credentials, tenant=tenant, register=self._add_secrets)
        # The guards observed: they record what they would stop instead of stopping it.
        self.observing = policy.observed_guards
        self.allowed = frozenset(policy.tools.allow)
        # Allowed tools whose definitions do not match their pins (tools.pins), with why:
        # hidden and refused (gateway/pins.py).
        self.unpinned = {} if policy.tools.pins is None else unpinned(policy, self.tools)
        self._effective: dict[str, Effective] = {}
        self._init_outcome()
        self._init_guard_state()
        self.events = EventLog(self)
        self.time = RunTime(self)
        # Waits on the run's behalf end at its deadline (on the real clock only): see
        # RunTime.check and store_call.
        self.store_shared = store.shared
        self.timed_store = self.time.real_clock and self.store_shared
        self.store_gave_up = False
        caps = {n: s.max_calls for n, s in policy.tools.specs.items() if s.max_calls is not None}
        self.resumed = False
        # What the run keeps for replay (gateway/recording.py), once it has started.
        self.recording: Recorder | None = None
        self.set_limits(limits_from_policy(policy.budgets, caps), prior=None)

    def set_limits(self, limits: Limits, *, prior: Usage | None) -> None:
        """The run's budgets and time limit, counted from ``prior`` (a resumed run's usage).

        In observe mode the backstops are enforced and the policy's own limits watched
        (RunBudget's shadow meter; RunTime.check records the time it would have stopped at).
        """
        self.budget = RunBudget(self, limits, prior)
        self.time.policy_seconds = limits.max_seconds
        self.time.max_seconds = (
            BACKSTOP.max_seconds if self.observes("budgets") else limits.max_seconds
        )
        if prior is not None:
            self.time.resume_from(prior.active_seconds, prior.waiting_seconds)

    def _init_outcome(self) -> None:
        """The run's stop, answer and how its last tool call was served."""
        self.recorded = False  # whether the store holds this run's record
        self.damaged_usage = False
        self.stop: StopInfo | None = None
        self.cancelled = False
        self.finished = False
        self.would_stop: list[StopInfo] = []
        self.answer: str | None = None
        self.partial: str | None = None
        self.last_text: str | None = None
        # The text of the latest model turn (None when it had none): an approval's purpose.
        self.turn_text: str | None = None
        # How the last tool call was served: (outcome, tool, idempotency key); see CallInfo.
        self.last_call: tuple[CallOutcome, str, str | None] | None = None

    def _init_guard_state(self) -> None:
        """What the guards keep across the run's calls (each guard's module says how)."""
        self.invalid_calls = 0  # guards/denial.py: mistakes the model made
        self.cache: dict[tuple[str, str], tuple[float, Any]] = {}  # guards/cache.py
        self.recent_calls: list[tuple[str, str]] = []  # guards/loop_detection.py
        # The kill-switch check made while a call of a name runs (guards/killswitch.watch).
        self.watches: dict[str | None, Callable[[], Any]] = {}
        # How ``Run.call`` calls each tool: directly, or through the flow (gateway/direct.py).
        self.plans: dict[str, Any] = {}
        # How ``authorize`` passes each tool: directly, or through the flow (the same).
        self.external_plans: dict[str, Any] = {}

    # -- store access, fail closed, within the run's time ----------------------------
    def store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the store; whatever it raises (a store object may
        raise anything) stops the run (fail closed).

        The store waits (locks, busy handler, pool, statements) no longer than the run
        has left (:data:`~corral.clock.DEADLINE`; past it, one short attempt). Once a
        store call failed past the deadline the store is not waited on again: the run
        stops with ``max_seconds``.
        """
        token = None
        if self.timed_store:
            deadline = self.time.deadline
            if self.store_gave_up and time.monotonic() > deadline:
                raise self._store_failed(StoreError(GAVE_UP))
            if DEADLINE.get() != deadline:  # else RunTime.check set it for this flow already
                token = DEADLINE.set(deadline)
        try:
            return fn(*args, **kwargs)
        except Stop:
            raise
        except Exception as exc:
            raise self._store_failed(StoreError.of(exc)) from exc
        finally:
            if token is not None:
                DEADLINE.reset(token)

    def _store_failed(self, exc: StoreError) -> Stop:
        """The stop for a failed store call: ``max_seconds`` once the run's time is up (the
        wait was cut by it), else ``control_plane_unavailable`` (not retryable when the
        store's file is gone for good)."""
        if self.timed_store:
            over = self.time.remaining()
            if over <= 0:
                self.store_gave_up = True
                return self.time.out_of_time(over, f"its store did not answer in time: {exc}")
        return self.stamp(
            Stop(
                "control_plane_unavailable",
                "store",
                message=str(exc),
                retryable=not isinstance(exc, StoreGone),
            )
        )

    # -- tools -----------------------------------------------------------------------
    def effective(self, name: str) -> Effective:
        """Tool ``name`` as this run treats it (computed once)."""
        eff = self._effective.get(name)
        if eff is None:
            eff = self._effective[name] = effective(self.policy, self.tools[name], name)
        return eff

    # -- stops -----------------------------------------------------------------------
    def stamp(self, stop: Stop) -> Stop:
        """Mark ``stop`` as this run's and record it: a stop ends the run, so every later
        action raises it again, also when the caller caught it (first stop wins)."""
        stop.run_id = self.id
        self.record_stop(self.scrub_stop(stop).info)
        return stop

    def record_stop(self, info: StopInfo) -> None:
        if self.stop is None:
            self.stop = self.scrub_info(info)

    def scrub_refusal(self, refusal: Stop | ToolRejected) -> None:
        """A stop or a refusal on its way out of the gateway, scrubbed in place: what it
        quotes (the arguments, a tool's own words) reaches the model and the caller like
        everything else they see. (``except (Stop, ToolRejected)`` around a call: free while
        nothing is raised, unlike a ``with`` block.)"""
        if isinstance(refusal, Stop):
            self.scrub_stop(refusal)
            return
        refusal.message = self.redactor.text(refusal.message)
        refusal.args = (refusal.message,)
        refusal.tool = self.redactor.secrets_only(refusal.tool)

    def scrub_stop(self, stop: Stop) -> Stop:
        """``stop``, its message, subject and extras scrubbed of secrets in place: whatever
        it quotes (a tool's error, an invalid output, arguments) reaches the caller."""
        info = self.scrub_info(stop.info)
        if info is not stop.info:
            stop.info = info
            stop.args = (str(info) + (f": {info.message}" if info.message else ""),)
        return stop

    def scrub_info(self, info: StopInfo) -> StopInfo:
        """``info`` with its texts scrubbed (itself when nothing changed)."""
        r = self.redactor
        message = r.text(info.message) if info.message else info.message
        extra = r.data(info.extra) if info.extra else info.extra
        detail: str = r.secrets_only(info.detail)
        tool = self.scrub_text(info.tool)
        if (message, extra, detail, tool) == (info.message, info.extra, info.detail, info.tool):
            return info
        return replace(info, message=message, extra=dict(extra), detail=detail, tool=tool)

    def scrub_text(self, text: str | None) -> str | None:
        """``text`` scrubbed of the run's registered secrets only (an agent's answer, a
        subject): pattern look-alikes may be what was asked for."""
        return text if text is None else str(self.redactor.secrets_only(text))

    def observes(self, guard: Guard) -> bool:
        """Whether ``guard`` records what it would stop instead of stopping it."""
        return guard in self.observing

    def deny(self, stop: Stop, guard: Guard) -> None:
        """Raise ``stop``, or, when ``guard`` is observed, record that it would have happened."""
        if guard in self.observing:
            self.observed(stop)
            return
        raise self.stamp(stop)

    def observed(self, stop: Stop) -> None:
        info = self.scrub_info(stop.info)
        self.would_stop.append(info)
        self.events.add("would_stop", **info.to_dict())

    def ensure_running(self) -> None:
        if self.cancelled and self.stop is None:
            raise self.stamp(Stop("cancelled", "run", message="the run was cancelled"))
        if self.stop is not None:
            raise self.stamp(Stop.from_info(self.stop))
        if self.finished:
            raise ConfigError(f"run {self.id} has finished; start a new run")

    def _add_secrets(self, values: list[str]) -> None:
        """Scrub ``values`` from everything the run records or shows the model from now on."""
        self.redactor = self.redactor.with_secrets(values)
