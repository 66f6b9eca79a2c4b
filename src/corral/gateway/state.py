"""The state of one governed run, shared by the gateway, the loop and ``Run``.

Nothing here does I/O beyond the store: waiting (for a tool, a model or an
approval) is done by the sync or async driver in ``gateway/drivers.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any, TypeVar

from corral.budgets import windows
from corral.budgets.meter import Charge, Hold, Limits, Meter, Usage, limits_from_policy
from corral.clock import DEADLINE, SYSTEM_CLOCK, Clock, SystemClock
from corral.exceptions import ConfigError, Stop, StoreError, StoreGone
from corral.gateway.guards.arguments import check_constraints
from corral.policy.schema import ArgConstraint, Guard, Policy
from corral.record import redact, sinks
from corral.result import CallOutcome, Status
from corral.secrets import Credentials, SecretProvider
from corral.stops import StopInfo, StopReason
from corral.stores.base import Event, Refusal, RunRecord, ScopedCharge, Store
from corral.tools import Tool

DEFAULT_TOOL_TIMEOUT = 30.0
_GAVE_UP = "not tried: the store gave no answer by the run's deadline"

log = logging.getLogger("corral")
T = TypeVar("T")

#: The run backstops: enforced even in observe mode.
BACKSTOP = Limits()


@dataclass(frozen=True, kw_only=True, slots=True)
class Effective:
    """A tool as this run treats it: its declaration merged with the policy (stricter wins)."""

    tool: Tool
    effect: str
    cost_usd: Decimal
    expensive: bool
    timeout: float
    retries: int
    idempotent: bool
    output_schema: Mapping[str, Any] | None
    constraints: Mapping[str, ArgConstraint]
    max_output_chars: int
    strip_html: bool
    cache: bool
    cache_ttl: float
    require_approval: bool
    charge_on_error: bool
    charge: Charge
    """What one attempt reserves: a tool call and the declared cost."""
    call_only: Charge
    """What a failed attempt costs with ``charge_on_error: false``: the call, no USD."""
    policy_args_schema: Mapping[str, Any] | None = None
    """The policy's own schema for the arguments, checked on top of the tool's."""
    breaker: str = ""
    """The breaker the tool's calls count against: its ``dependency``, else its name."""
    credentials: tuple[str, ...] = ()
    """The credentials a call needs: the tool's declaration and the policy's, together."""

    @property
    def cacheable(self) -> bool:
        """Whether identical calls may be served from the run's read cache."""
        return self.effect == "read" and self.cache and self.cache_ttl > 0


_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)


def canonical(args: Mapping[str, Any]) -> str:
    """The canonical JSON of ``args``: sorted keys, no spaces, UTF-8 kept as is."""
    if _C_ENCODER is None or type(args) is not dict:  # no C encoder, or not a plain dict
        return _CANONICAL.encode(args)
    # What _CANONICAL.encode does for a dict, without rebuilding its options on every call:
    # the C encoder with the same settings, and its own circular-reference markers (a fresh
    # dict per call, so threads never share them).
    encode = _C_ENCODER({}, str, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    return "".join(encode(args, 0))


def args_digest(args: Mapping[str, Any], *, text: str | None = None) -> str:
    """SHA-256 of the canonical JSON of ``args`` (pass ``text`` if already computed)."""
    return hashlib.sha256((canonical(args) if text is None else text).encode()).hexdigest()


def _event_maker() -> Callable[
    [str, int, str, float, Mapping[str, Any], str | None, str | None], Event
]:
    """A constructor of :class:`Event` taking its fields in order, about a microsecond and a
    half cheaper than ``Event(...)``: a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; this sets the slots directly, once per event the run records."""
    names = ("run_id", "seq", "kind", "at", "data", "tenant", "actor")
    if tuple(f.name for f in fields(Event)) != names or not hasattr(Event, "__slots__"):
        return lambda *values: Event(**dict(zip(names, values, strict=True)))
    s_run, s_seq, s_kind, s_at, s_data, s_tenant, s_actor = (
        getattr(Event, name).__set__ for name in names
    )
    new = object.__new__

    def make(
        run_id: str,
        seq: int,
        kind: str,
        at: float,
        data: Mapping[str, Any],
        tenant: str | None,
        actor: str | None,
    ) -> Event:
        event = new(Event)
        s_run(event, run_id)
        s_seq(event, seq)
        s_kind(event, kind)
        s_at(event, at)
        s_data(event, data)
        s_tenant(event, tenant)
        s_actor(event, actor)
        return event

    return make


_new_event = _event_maker()


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex[:20]


class RunCore:
    """Budgets, time, trace and stop bookkeeping of one run."""

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
    ) -> None:
        self.policy = policy
        self.tools = dict(tools)
        self.store = store
        self.clock = clock or SYSTEM_CLOCK
        self.tenant = tenant
        self.agent = agent
        self.approver = approver
        # Secrets never reach the trace or the audit log: every event is scrubbed of the
        # credentials' values (given, or resolved from a provider before the tool they are
        # for runs), secret-named keys and credential-looking text (redact.py).
        self.redactor = redact.redactor(policy.redact.keys, policy.redact.patterns)
        self.credentials = Credentials(credentials, tenant=tenant, register=self._add_secrets)
        # The guards observed: they record what they would stop instead of stopping it.
        self.observing = policy.observed_guards
        self.allowed = frozenset(policy.tools.allow)
        caps = {n: s.max_calls for n, s in policy.tools.specs.items() if s.max_calls is not None}
        policy_limits = limits_from_policy(policy.budgets, caps)
        prior: Usage | None = None
        self.resumed = False
        self.id = run_id or new_run_id()
        self.started_at = time.time()
        # Whether the store holds this run's record: a run whose start could not be
        # written (the store failed, then recovered) creates it when it ends.
        self.recorded = False
        self.stop: StopInfo | None = None
        self._seq = 0
        self._damaged_usage = False
        # Waits on the run's behalf end at its deadline (on the real clock only): see
        # check_time and _store_call. Provisional timing until the run's own starts, below.
        self._real_clock = isinstance(self.clock, SystemClock)
        self._timed_store = self._real_clock and store.shared
        self._store_gave_up = False
        self.started, self.waiting, self._prior_active = self.clock.monotonic(), 0.0, 0.0
        self.max_seconds = policy_limits.max_seconds
        try:
            existing = self._load(run_id)
        except Stop:
            # Fail closed, but inside the run: the first action raises this stop, and
            # `with Run(...)` records it like any other.
            existing = None
        if existing is not None:
            prior = self._prior_usage(existing)
            self.resumed = True
        if self.observes("budgets"):
            # Enforce only the backstops; the policy's own limits are watched.
            self.meter = Meter(BACKSTOP, usage=prior)
            self.shadow: Meter | None = Meter(policy_limits, usage=prior)
        else:
            self.meter = Meter(policy_limits, usage=prior)
            self.shadow = None
        self.limits = policy_limits
        self.max_seconds = policy_limits.max_seconds
        if self.observes("budgets"):
            # Like steps and calls: the backstop is enforced, the policy's time is watched
            # (check_time records it as a stop that would have happened).
            self.max_seconds = BACKSTOP.max_seconds
        self._time_watched = False
        self._prior_active = prior.active_seconds if prior else 0.0
        self._prior_waiting = prior.waiting_seconds if prior else 0.0
        self.started = self.clock.monotonic()
        self.waiting = 0.0
        self.cancelled = False
        self.invalid_calls = 0
        self.would_stop: list[StopInfo] = []
        self.answer: str | None = None
        self.partial: str | None = None
        self.finished = False
        self.last_text: str | None = None
        # The text of the latest model turn (None when it had none): an approval's purpose.
        self.turn_text: str | None = None
        self._pending: list[Event] = []
        self._lock = threading.Lock()
        self._effective: dict[str, Effective] = {}
        self.cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self.recent_calls: list[tuple[str, str]] = []
        # The kill-switch check made while a call of a name runs (guards/killswitch.watch).
        self.watches: dict[str | None, Callable[[], Any]] = {}
        self._grants: dict[int, tuple[str, list[ScopedCharge]]] = {}
        self.task = task
        # How the last tool call was served: (outcome, tool, idempotency key); see CallInfo.
        self.last_call: tuple[CallOutcome, str, str | None] | None = None
        self._check_approval_channel()
        check_constraints(policy, self.tools)
        if self.stop is None:
            with contextlib.suppress(Stop):
                self._open_record(existing)
        self.event(
            "run_start",
            resumed=self.resumed,
            policy=policy.digest,
            mode=policy.mode_name,
            observed=sorted(self.observing),
            tenant=self.tenant,
            agent=self.agent,
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "run %s %s: tenant %s, agent %s, policy %s (%s)",
                self.id,
                "resumed" if self.resumed else "started",
                tenant or "-",
                agent or "-",
                policy.digest,
                policy.mode_name,
            )
        self._start_warnings()

    def _start_warnings(self) -> None:
        """Say at start what would otherwise surprise later: an allowed tool no code
        registered (its calls are unknown tools), and one whose effect nobody declared
        (a write: with approvals on, every call waits for a human). In the run's trace
        every time; in the log once per process per policy and tool, so that a fleet of
        runs does not flood it."""
        policy = self.policy
        for name in policy.tools.allow:
            message: str | None
            if name not in self.tools:
                spec = policy.spec(name)
                described = spec is not None and spec.args_schema is not None
                message = (_DESCRIBED if described else _UNREGISTERED).format(name=name)
            else:
                message = self._undeclared_effect(name)
            if message is None:
                continue
            self.event("warning", tool=name, message=message)
            if (policy.digest, message) not in _WARNED:
                _WARNED.add((policy.digest, message))
                log.warning(message)

    def _undeclared_effect(self, name: str) -> str | None:
        """The warning for tool ``name`` when neither its code nor the policy declares its
        effect (so it is treated as a write), else None."""
        tool = self.tools[name]
        spec = self.policy.spec(name)
        if tool.effect_declared or (spec is not None and spec.effect is not None):
            return None
        eff = self.effective(name)
        fix = (
            f"set tools.specs.{name}.effect: read"
            if tool.described
            else "declare effect='read' in @corral.tool"
        )
        if eff.require_approval and not self.observes("approvals"):
            timeout = self.policy.writes.approval_timeout_seconds
            what = f"each call waits for an approval (up to {timeout:g} s)"
        else:
            what = "it is never retried and a disable_writes kill switch stops it"
        return (
            f"tool {name} declares no effect, so it is treated as a write: {what} "
            f"— {fix} if it only reads"
        )

    def _open_record(self, existing: RunRecord | None) -> None:
        if existing is None:
            self._store_call(self.store.create_run, self._new_record())
            self.recorded = True
            return
        self.recorded = True
        events = self._store_call(self.store.events, self.id)
        self._seq = max((e.seq for e in events), default=0)
        self._store_call(
            self.store.update_run,
            self.id,
            status="running",
            ended_at=None,
            kill_mode=self.policy.kill_switch.mode_when_enabled,  # this segment's policy
        )

    def _new_record(self) -> RunRecord:
        return RunRecord(
            id=self.id,
            tenant=self.tenant,
            agent=self.agent,
            task=self.task,
            policy_digest=self.policy.digest,
            started_at=self.started_at,
            kill_mode=self.policy.kill_switch.mode_when_enabled,
        )

    def _load(self, run_id: str | None) -> RunRecord | None:
        if run_id is None:
            return None
        record = self._store_call(self.store.get_run, run_id)
        if record is not None and record.tenant != self.tenant:
            raise ConfigError(f"run {run_id!r} belongs to another tenant")
        return record

    def _prior_usage(self, record: RunRecord) -> Usage | None:
        """The stored usage a resumed run starts from. A damaged one (negative, not finite,
        malformed) would start the run with a credit: fail closed instead, as for a store
        that cannot be read (the first action stops with ``control_plane_unavailable``)."""
        try:
            return Usage.from_dict(record.usage)
        except ValueError as exc:
            # The record stays (it is not re-created at the end) and its usage as found,
            # so that every later resume refuses too.
            self._damaged_usage = self.recorded = True
            self.stamp(
                Stop(
                    "control_plane_unavailable",
                    "store",
                    message=f"run {record.id!r} has damaged usage in the store ({exc}); "
                    "it cannot be resumed",
                )
            )
            return None

    def _check_approval_channel(self) -> None:
        """Refuse at start a policy needing approvals that nobody could give: with no
        in-process approver, the store's queue is the channel, and an in-memory store is
        reachable from no other process."""
        if self.approver is not None or self.observes("approvals"):
            return
        if self.store.shared:
            return
        needing = sorted(
            name
            for name in self.tools
            if name in self.allowed and self.effective(name).require_approval
        )
        if needing:
            raise ConfigError(
                f"the policy requires approval for {', '.join(needing)} but no approval channel "
                "is reachable: the in-memory store is seen by no other process, so nobody "
                "could run `corral approvals approve`; use a SQLite or PostgreSQL store "
                "(store=... or CORRAL_DB), pass approver=... (a trusted local approver), or "
                "set writes.require_approval: false for these tools"
            )

    # -- store access, fail closed, within the run's time ----------------------------
    def _store_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the store; whatever it raises (a store object may
        raise anything) stops the run (fail closed).

        The store waits (locks, busy handler, pool, statements) no longer than the run
        has left (:data:`~corral.clock.DEADLINE`; past it, one short attempt). Once a
        store call failed past the deadline the store is not waited on again: the run
        stops with ``max_seconds``.
        """
        token = None
        if self._timed_store:
            deadline = self.deadline
            if self._store_gave_up and time.monotonic() > deadline:
                raise self._store_failed(StoreError(_GAVE_UP))
            if DEADLINE.get() != deadline:  # else check_time set it for this flow already
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
        if self._timed_store:
            over = self.remaining()
            if over <= 0:
                self._store_gave_up = True
                return self._out_of_time(over, f"its store did not answer in time: {exc}")
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
        eff = self._effective.get(name)
        if eff is not None:
            return eff
        tool = self.tools[name]
        spec = self.policy.spec(name)
        p = self.policy
        effect = "write" if "write" in (tool.effect, spec.effect if spec else None) else "read"
        if spec is not None and spec.effect == "read" and not tool.effect_declared:
            effect = "read"
        timeout = spec.timeout_seconds if spec and spec.timeout_seconds else tool.timeout
        retries = spec.retries if spec and spec.retries is not None else tool.retries
        idempotent = spec.idempotent if spec and spec.idempotent is not None else tool.idempotent
        require = (
            spec.require_approval
            if spec and spec.require_approval is not None
            else (effect == "write" and p.writes.require_approval)
        )
        cost = spec.cost_usd if spec and spec.cost_usd is not None else tool.cost_usd
        threshold = p.kill_switch.expensive_cost_usd
        expensive = bool(spec.expensive if spec and spec.expensive is not None else tool.expensive)
        if threshold is not None and cost >= threshold:
            expensive = True
        eff = Effective(
            tool=tool,
            effect=effect,
            cost_usd=cost,
            expensive=expensive,
            timeout=timeout or DEFAULT_TOOL_TIMEOUT,
            retries=retries if (effect == "read" or idempotent) else 0,
            idempotent=idempotent,
            output_schema=(
                spec.output_schema if spec and spec.output_schema else tool.output_schema
            ),
            constraints=spec.constraints if spec else {},
            max_output_chars=(
                spec.max_output_chars
                if spec and spec.max_output_chars
                else p.observations.max_chars
            ),
            strip_html=(
                spec.strip_html
                if spec and spec.strip_html is not None
                else p.observations.strip_html
            ),
            cache=spec.cache if spec else True,
            cache_ttl=spec.cache_ttl_seconds if spec else 60.0,
            require_approval=bool(require),
            charge_on_error=spec.charge_on_error if spec else True,
            charge=Charge(tool_calls=1, usd=cost, tool=name),
            call_only=Charge(tool_calls=1, tool=name),
            policy_args_schema=spec.args_schema if spec else None,
            breaker=(spec.dependency if spec and spec.dependency else name),
            credentials=tuple(
                dict.fromkeys((*tool.credentials, *(spec.credentials if spec else ())))
            ),
        )
        self._effective[name] = eff
        return eff

    def degraded(self, name: str) -> bool:
        """Whether tool ``name``'s breaker is open now (fail closed when it cannot be read)."""
        from corral.controls.breaker import wall

        state = self._store_call(self.store.breaker, self.effective(name).breaker, now=wall(self))
        return bool(state.state == "open")

    # -- time ------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.monotonic()

    def active_seconds(self) -> float:
        return self.now() - self.started - self.waiting

    @property
    def deadline(self) -> float:
        """When the run's active time runs out, on the run's clock."""
        return self.started + self.waiting + self.max_seconds - self._prior_active

    def remaining(self) -> float:
        return (
            self.started + self.waiting + self.max_seconds - self._prior_active
        ) - self.clock.monotonic()

    def check_time(self) -> None:
        """Raise ``max_seconds`` when the run's time is up.

        Inside a driver (which sets :data:`~corral.clock.DEADLINE` while it runs a flow),
        also bound the rest of the flow by the run's deadline: the waits on the store and
        output hygiene (until the flow next waits for an approval or a pause).
        """
        deadline = self.started + self.waiting + self.max_seconds - self._prior_active
        over = deadline - self.clock.monotonic()
        if over <= 0:
            raise self._out_of_time(over)
        if self._real_clock:
            current = DEADLINE.get()
            if current is not None and current != deadline:
                DEADLINE.set(deadline)
        if self.observes("budgets") and not self._time_watched:
            used = self._prior_active + self.active_seconds()
            if used > self.limits.max_seconds:
                self._time_watched = True
                limit = self.limits.max_seconds
                self.observed(
                    Stop(
                        "max_seconds",
                        "run",
                        scope="run",
                        limit=limit,
                        observed=round(used, 3),
                        message=f"the run has used its {limit:g} s",
                    )
                )

    def _out_of_time(self, over: float, why: str | None = None) -> Stop:
        limit = self.max_seconds
        message = f"the run has used its {limit:g} s" + (f" ({why})" if why else "")
        return self.stamp(
            Stop(
                "max_seconds",
                "run",
                scope="run",
                limit=limit,
                observed=round(limit - over, 3),
                message=message,
            )
        )

    # -- budgets ---------------------------------------------------------------------
    def fits(self, charge: Charge) -> None:
        refusal = self.meter.fits(charge)
        if refusal is not None:
            raise self.stamp(refusal)
        self._watch(charge, hold=False)

    def reserve(self, charge: Charge) -> Hold:
        """Hold ``charge`` against the run's budgets and every window limit, all or nothing."""
        try:
            hold = self.meter.reserve(charge)
        except Stop as stop:
            raise self.stamp(stop) from None
        if self.policy.limits and (charge.tool_calls or charge.usd):
            self._reserve_shared(hold, charge)
        if self.shadow is not None:
            self._watch(charge, hold=True)
        return hold

    def _reserve_shared(self, hold: Hold, charge: Charge) -> None:
        wanted = windows.scoped(
            self.policy, charge, tenant=self.tenant, agent=self.agent, now=time.time()
        )
        if not wanted:
            return
        try:
            grant = self._store_call(self.store.reserve, wanted, now=time.time())
            if isinstance(grant, Refusal) and self.observes("limits"):
                # Observed shared limits are watched like the run's own: the refusal is a
                # would-be stop, and the spend still counts in every scope.
                self.observed(windows.refusal_stop(grant, charge.tool))
                unlimited = [replace(c, max_calls=None, max_usd=None) for c in wanted]
                grant = self._store_call(self.store.reserve, unlimited, now=time.time())
        except Stop:
            self.meter.refund(hold)
            raise
        if isinstance(grant, Refusal):
            self.meter.refund(hold)
            raise self.stamp(windows.refusal_stop(grant, charge.tool))
        self._grants[hold.id] = (grant, wanted)

    def _settle_shared(self, hold: Hold, actual: Charge) -> None:
        entry = self._grants.pop(hold.id, None)
        if entry is not None:
            grant, held = entry
            self._store_call(self.store.settle, grant, windows.settled(held, actual))

    def _watch(self, charge: Charge, *, hold: bool) -> None:
        if self.shadow is None:
            return
        refusal = self.shadow.fits(charge)
        if refusal is not None and hold:
            self.observed(refusal)

    def settle(self, hold: Hold, actual: Charge) -> None:
        actual = self.meter.settle(hold, actual)  # as recorded: never a credit
        if self._grants:
            self._settle_shared(hold, actual)
        if self.shadow is not None:
            self.shadow.commit(actual)

    def refund(self, hold: Hold) -> None:
        self.meter.refund(hold)
        if self._grants:
            self._settle_shared(hold, Charge())

    def usage(self) -> Usage:
        return self.meter.usage(
            active_seconds=self._prior_active + max(0.0, self.active_seconds()),
            waiting_seconds=self._prior_waiting + self.waiting,
        )

    # -- stops -----------------------------------------------------------------------
    def stamp(self, stop: Stop) -> Stop:
        """Mark ``stop`` as this run's and record it: a stop ends the run, so every later
        action raises it again, also when the caller caught it (first stop wins)."""
        stop.run_id = self.id  # type: ignore[attr-defined]
        self.record_stop(self.scrub_stop(stop).info)
        return stop

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
        self.event("would_stop", **info.to_dict())

    def ensure_running(self) -> None:
        if self.cancelled and self.stop is None:
            raise self.stamp(Stop("cancelled", "run", message="the run was cancelled"))
        if self.stop is not None:
            raise self.stamp(Stop.from_info(self.stop))
        if self.finished:
            raise ConfigError(f"run {self.id} has finished; start a new run")

    # -- trace -----------------------------------------------------------------------
    def _add_secrets(self, values: list[str]) -> None:
        """Scrub ``values`` from everything the run records or shows the model from now on."""
        self.redactor = self.redactor.with_secrets(values)

    def event(self, kind: str, **data: Any) -> None:
        """Record an event (scrubbed of secrets: see :mod:`corral.record.redact`)."""
        self.trusted_event(kind, **self.redactor.data(data))

    def trusted_event(self, kind: str, **data: Any) -> None:
        """Record an event whose values corral produced itself (registered names, digests,
        numbers, fixed words): nothing in it can be a secret, so it is not scanned."""
        at = time.time()
        with self._lock:
            self._seq += 1
            self._pending.append(
                _new_event(self.id, self._seq, kind, at, data, self.tenant, self.agent)
            )

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            self._write_events(pending)

    def trusted_event_flushed(self, kind: str, **data: Any) -> None:
        """:meth:`trusted_event` then :meth:`flush`, taking the lock once (the allow path
        records its outcome this way)."""
        at = time.time()
        with self._lock:
            self._seq += 1
            pending, self._pending = self._pending, []
            pending.append(_new_event(self.id, self._seq, kind, at, data, self.tenant, self.agent))
        self._write_events(pending)

    def _write_events(self, pending: list[Event]) -> None:
        self._store_call(self.store.append_events, pending)
        if sinks._SINKS:
            sinks.emit(pending)

    def record_stop(self, info: StopInfo) -> None:
        if self.stop is None:
            self.stop = self.scrub_info(info)

    def close(self, reason: StopReason, *, answer: str | None = None) -> str | None:
        """Persist the end of the run (first stop wins); returns why it could not be, or None.

        The run's outcome is never masked by a store failure here, nor is the failure
        silent: the caller puts it on the result.
        """
        usage = self.usage()
        info = self.stop if reason != "ok" else None
        status = status_of(reason)
        self.event(
            "run_end",
            stop_reason=reason,
            status=status,
            usage=usage.to_dict(),
            stop=info.to_dict() if info else None,
        )
        with self._lock:
            pending, self._pending = self._pending, []
            outstanding, self._grants = list(self._grants.values()), {}
        # Recording the end waits on the store no longer than other calls of the run (a
        # run ended by its deadline gets one short attempt per write).
        token = DEADLINE.set(self.deadline) if self._timed_store else None
        try:
            if self._store_gave_up and time.monotonic() > self.deadline:
                raise StoreError(_GAVE_UP)
            if not self.recorded:
                self.store.create_run(self._new_record())
                self.recorded = True
            # A shared hold still outstanding at the end (a call authorized and never
            # reported) is settled at what it held: the action may have happened, so its
            # spend stays counted, and its lease stops being renewed.
            for grant, held in outstanding:
                self.store.settle(grant, held)
            if pending:
                self.store.append_events(pending)
                if sinks._SINKS:
                    sinks.emit(pending)
            self.store.update_run(
                self.id,
                status=status,
                stop_reason=reason,
                stop=self.redactor.data(info.to_dict()) if info else None,
                answer=answer,
                **({} if self._damaged_usage else {"usage": usage.to_dict()}),
                ended_at=time.time(),
                would_stop=[self.redactor.data(w.to_dict()) for w in self.would_stop],
            )
        except Exception as exc:  # a store object may raise anything: the end is unrecorded
            return f"the end of the run could not be recorded: {StoreError.of(exc)}"
        finally:
            if token is not None:
                DEADLINE.reset(token)
        return None


#: Stop reasons whose status is ``error`` (something failed) rather than ``stopped``
#: (a bound or a decision ended the run).
ERROR_REASONS: frozenset[str] = frozenset(
    {
        "agent_error",
        "model_error",
        "tool_error",
        "invalid_model_output",
        "invalid_tool_output",
        "control_plane_unavailable",
    }
)

#: (policy digest, message) of the start warnings logged by this process.
_WARNED: set[tuple[str, str]] = set()

_UNREGISTERED = (
    "tools.allow lists {name} but no tool of that name was given to the run; "
    "calls to it are handled as unknown tools"
)
_DESCRIBED = (
    "tools.allow lists {name}, described only by the policy (tools.specs.{name}), but the "
    "bounded loop has no function to run it: calls to it are handled as unknown tools; "
    "give corral.run a tool of that name, or govern it with Run.authorize and Run.report"
)


def status_of(reason: StopReason) -> Status:
    """``ok`` for ``ok``; ``error`` for failures; ``stopped`` for bounds and decisions."""
    if reason == "ok":
        return "ok"
    return "error" if reason in ERROR_REASONS else "stopped"
