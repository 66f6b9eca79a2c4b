"""The store seam: everything several runs, processes or machines share.

One Protocol, several backends (in-memory, SQLite, PostgreSQL) held to one
contract test suite. Contended state must use the backend's own atomicity, not
in-process locks, so it holds across replicas:

- **scoped reservations**: charge several budget scopes (tenant, agent, tool, each
  window) at once, all or nothing, refusals naming the scope. A *grant* is leased
  (:class:`GrantLeases`): the process holding it renews it (``renew_grants``, from
  the renewer thread) until it is settled; ``reclaim`` refunds the grants whose lease
  lapsed (their process died), and ``reserve`` calls it first at most once per
  :data:`RECLAIM_EVERY`. A reclaimed grant is kept, marked, until its windows end:
  settling it then charges the actual amount (its hold was already refunded), once.
  Refunds and late charges apply only while the window (or a rolling scope's
  sub-bucket) charged still counts. The Python stores share one rule for all of this
  (:func:`reserve_in`, :func:`settle_in`, :class:`ScopeState`); PostgreSQL runs the
  same in SQL. Every backend first passes what it is given through :func:`held_charges`
  and :func:`settled_charges`: figures are checked (a negative, non-finite or
  ill-typed one is a :class:`ValueError`, and nothing changes), and entries naming
  one scope are merged, so a scope's usage is counted once whatever list it came in;
- **degrade counters**: per tool (or model endpoint) and UTC-aligned window bucket
  (``floor(now / size) * size``), the attempts, failures and retries every process
  counted. ``degrade_add`` adds attempts and failures and returns the window (the
  covering bucket and the previous one, weighted: :class:`DegradeWindow`);
  ``degrade_retry`` spends one retry if :func:`retry_fits` (check and spend in one
  atomic step, so processes cannot overspend the budget together); ``degrade_reset``
  starts a fresh window (the breaker opened or closed);
- **kill switches**, **approvals**, **idempotency claims**, **breakers**; a kill
  switch's change and its audit record (``audit=``) are written in one transaction
  (a clear that finds nothing records nothing); every backend keys a switch by
  :func:`kill_target` (``global`` has no target, every other scope needs one), so
  they accept and refuse the same switches; an approval changes state only by
  ``transition_approval`` (from the status the caller expects, or not at all), so of
  two processes deciding or consuming it at once one wins;
- **runs and their events** (trace and decisions). The store records which process
  runs each run (:class:`~corral.stores.owner.RunOwner`) and renews the run's
  heartbeat on every write to it (``heartbeat`` renews it during a long wait);
  ``mark_interrupted`` marks ``interrupted`` the runs whose process died or whose
  heartbeat lapsed, so a crash never leaves a run looking ``running`` for ever.
- **the audit log**: every event appended (``interrupted`` ones included) is sealed
  into one hash chain in the same transaction that appends it (see
  :mod:`~corral.stores.chain`): a gap-free global ``seq``, the previous record's
  hash, and its own hash, keyed when ``CORRAL_AUDIT_KEY`` was set when the store
  was opened. Concurrent appenders, in any number of processes, make one chain.
  (The in-memory store fixes each event's place when it is appended and computes
  the hashes when the chain is next read: nothing outside the process can see or
  change its records before that.)

A backend that cannot answer raises :class:`~corral.exceptions.StoreError`;
callers refuse the action (fail closed).
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from corral._safe import shown
from corral.exceptions import ConfigError
from corral.stores.leases import LEASE_SECONDS, RENEWER, Held, Renewer
from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner

#: A store reclaims lapsed grants at most this often (seconds of wall time), from ``reserve``.
RECLAIM_EVERY = 1.0

KillMode = Literal["disable_writes", "disable_expensive", "stop_all"]
KillScope = Literal["global", "tenant", "agent", "tool", "run"]
ClaimStatus = Literal["claimed", "done", "in_flight", "mismatch", "unknown"]
ClaimState = Literal["in_flight", "unknown", "done"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "cancelled", "used"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ScopedCharge:
    """A charge against one shared scope (``tenant:acme/1d``) with that scope's limits."""

    scope: str
    calls: int = 0
    usd: Decimal = Decimal(0)
    max_calls: int | None = None
    max_usd: Decimal | None = None
    window_ends: float | None = None
    """When what this charge adds stops counting: its calendar window's end, or for a
    rolling scope the time its sub-bucket leaves the window."""
    rolling: bool = False
    """The scope counts the sum of its sub-buckets still in the window (one per
    ``window_ends``), instead of starting again from zero when a window ends."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Refusal:
    scope: str
    dimension: Literal["calls", "usd"]
    limit: Any
    would_be: Any
    retry_after: float | None = None


def refuse(
    c: ScopedCharge,
    calls: int,
    usd: Decimal,
    *,
    now: float,
    buckets: Sequence[tuple[float, int, Decimal]] = (),
) -> Refusal | None:
    """The refusal ``c`` meets in a scope that holds ``calls`` and ``usd``, or ``None``.

    ``buckets`` are a rolling scope's sub-buckets, ``(ends, calls, usd)``: a refusal
    there says when enough of them have aged out for ``c`` to fit (see
    :func:`rolling_retry`). One rule for every backend that checks in Python
    (PostgreSQL checks the same in SQL).
    """
    dimension: Literal["calls", "usd"]
    limit: Any
    would_be: Any
    if c.max_calls is not None and c.calls and calls + c.calls > c.max_calls:
        dimension, limit, would_be = "calls", c.max_calls, calls + c.calls
    elif c.max_usd is not None and c.usd and usd + c.usd > c.max_usd:
        dimension, limit, would_be = "usd", c.max_usd, usd + c.usd
    else:
        return None
    retry = None if c.window_ends is None else max(0.0, c.window_ends - now)
    if c.rolling:
        retry = rolling_retry(c, calls, usd, buckets, now=now, default=retry)
    return Refusal(
        scope=c.scope, dimension=dimension, limit=limit, would_be=would_be, retry_after=retry
    )


def rolling_retry(
    c: ScopedCharge,
    calls: int,
    usd: Decimal,
    buckets: Sequence[tuple[float, int, Decimal]],
    *,
    now: float,
    default: float | None,
) -> float | None:
    """Seconds until enough of a rolling scope's buckets have aged out for ``c`` to fit.

    The buckets leave the window oldest first, each at its ``ends``; ``default`` when
    even an empty window would not hold ``c``.
    """
    for ends, b_calls, b_usd in sorted(buckets):
        calls -= b_calls
        usd -= b_usd
        calls_fit = c.max_calls is None or not c.calls or calls + c.calls <= c.max_calls
        if calls_fit and (c.max_usd is None or not c.usd or usd + c.usd <= c.max_usd):
            return max(0.0, ends - now)
    return default


class ScopeState:
    """A scope's figures as the Python stores keep them: totals, and for a calendar
    window its end, for a rolling scope its sub-buckets (``ends -> [calls, usd]``)."""

    __slots__ = ("buckets", "calls", "usd", "window_ends")

    def __init__(
        self,
        calls: int = 0,
        usd: Decimal = Decimal(0),
        window_ends: float | None = None,
        buckets: dict[float, list[Any]] | None = None,
    ) -> None:
        self.calls = calls
        self.usd = usd
        self.window_ends = window_ends
        self.buckets = buckets

    @classmethod
    def opened(cls, state: ScopeState | None, c: ScopedCharge, now: float) -> ScopeState:
        """``state`` as ``c`` meets it at ``now``: an ended window starts again from zero,
        a rolling scope's buckets that left the window no longer count."""
        if c.rolling:
            if state is None or state.buckets is None:
                return cls(buckets={})
            for ends in [e for e in state.buckets if e <= now]:
                gone = state.buckets.pop(ends)
                state.calls -= gone[0]
                state.usd -= gone[1]
            return state
        if state is None or (state.window_ends is not None and now >= state.window_ends):
            return cls(window_ends=c.window_ends)
        return state

    def refusal(self, c: ScopedCharge, now: float) -> Refusal | None:
        buckets = () if not self.buckets else [(e, b[0], b[1]) for e, b in self.buckets.items()]
        return refuse(c, self.calls, self.usd, now=now, buckets=buckets)

    def add(self, c: ScopedCharge) -> None:
        self.calls += c.calls
        self.usd += c.usd
        if c.rolling and c.window_ends is not None:
            assert self.buckets is not None
            bucket = self.buckets.setdefault(c.window_ends, [0, Decimal(0)])
            bucket[0] += c.calls
            bucket[1] += c.usd

    def counts(self, held: ScopedCharge, now: float | None = None) -> bool:
        """Whether what ``held`` added still counts here (its window or bucket is current)."""
        if now is not None and held.window_ends is not None and held.window_ends <= now:
            return False
        if held.rolling:
            return self.buckets is not None and held.window_ends in self.buckets
        return self.window_ends == held.window_ends

    def change(self, held: ScopedCharge, calls: int, usd: Decimal) -> None:
        """Add ``calls`` and ``usd`` (negative to refund) where ``held`` was charged."""
        self.calls += calls
        self.usd += usd
        if held.rolling and self.buckets is not None and held.window_ends in self.buckets:
            bucket = self.buckets[held.window_ends]
            bucket[0] += calls
            bucket[1] += usd


#: The most calls one charge may add to a scope: a charge pays for one action (a tool
#: call's attempt), so anything near this is a bug, and totals stay far inside 64 bits.
MAX_CHARGE_CALLS = 10**9
_MAX_CAP_CALLS = 2**63 - 1  # a BIGINT column


def held_charges(charges: Sequence[ScopedCharge]) -> list[ScopedCharge]:
    """``charges`` as a reservation holds them: checked, and one per scope.

    Calls must be whole numbers from 0 to :data:`MAX_CHARGE_CALLS`, USD finite
    decimals from 0, caps ``None`` or of the same kinds, ``window_ends`` ``None`` or
    finite; anything else raises :class:`ValueError` (a programming error: nothing
    is held). Entries naming the same scope describe one usage under several caps
    (two limit entries on one tenant and window): they merge into one charge that
    counts it once (the largest figure given of each dimension) against the tightest
    cap of each. They must agree on the window (``window_ends``, ``rolling``).
    """
    for c in charges:
        _check(c, caps=True)
    if len({c.scope for c in charges}) == len(charges):
        return list(charges)
    merged: dict[str, ScopedCharge] = {}
    for c in charges:
        m = merged.get(c.scope)
        if m is None:
            merged[c.scope] = c
            continue
        if (m.window_ends, m.rolling) != (c.window_ends, c.rolling):
            raise ValueError(
                f"scope {c.scope!r} is charged twice with different windows "
                f"(window_ends {m.window_ends!r} and {c.window_ends!r}, "
                f"rolling {m.rolling} and {c.rolling})"
            )
        merged[c.scope] = ScopedCharge(
            scope=c.scope,
            calls=max(m.calls, c.calls),
            usd=max(m.usd, c.usd),
            max_calls=_tightest(m.max_calls, c.max_calls),
            max_usd=_tightest(m.max_usd, c.max_usd),
            window_ends=m.window_ends,
            rolling=m.rolling,
        )
    return list(merged.values())


def settled_charges(actual: Sequence[ScopedCharge]) -> dict[str, ScopedCharge]:
    """What a settlement reports, by scope: checked like :func:`held_charges` (caps and
    windows are not read), entries naming one scope merged the same way."""
    out: dict[str, ScopedCharge] = {}
    for c in actual:
        _check(c, caps=False)
        m = out.get(c.scope)
        out[c.scope] = (
            c
            if m is None
            else ScopedCharge(scope=c.scope, calls=max(m.calls, c.calls), usd=max(m.usd, c.usd))
        )
    return out


def _tightest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _check(c: ScopedCharge, *, caps: bool) -> None:
    # Exact types: a bool is not a count, a float not an amount of money.
    scope, calls, usd = c.scope, c.calls, c.usd
    if type(scope) is not str or not scope:
        raise ValueError(f"a scoped charge needs a scope name, got {shown(scope)}")
    if type(calls) is not int or not 0 <= calls <= MAX_CHARGE_CALLS:
        raise ValueError(
            f"scope {scope!r}: calls must be a whole number from 0 to {MAX_CHARGE_CALLS}, "
            f"got {shown(calls)}"
        )
    if type(usd) is not Decimal or not usd.is_finite() or usd < 0:
        raise ValueError(f"scope {scope!r}: usd must be a finite Decimal >= 0, got {shown(usd)}")
    if not caps:
        return
    cap_calls, cap_usd, ends = c.max_calls, c.max_usd, c.window_ends
    if cap_calls is not None and (
        type(cap_calls) is not int or not 0 <= cap_calls <= _MAX_CAP_CALLS
    ):
        raise ValueError(
            f"scope {scope!r}: max_calls must be a whole number >= 0, got {shown(cap_calls)}"
        )
    if cap_usd is not None and (
        type(cap_usd) is not Decimal or not cap_usd.is_finite() or cap_usd < 0
    ):
        raise ValueError(
            f"scope {scope!r}: max_usd must be a finite Decimal >= 0, got {shown(cap_usd)}"
        )
    if ends is not None and (type(ends) not in (int, float) or not math.isfinite(ends)):
        raise ValueError(f"scope {scope!r}: window_ends must be a finite time, got {shown(ends)}")
    if type(c.rolling) is not bool:
        raise ValueError(f"scope {scope!r}: rolling must be a bool, got {shown(c.rolling)}")


def reserve_in(
    states: Mapping[str, ScopeState | None], charges: Sequence[ScopedCharge], now: float
) -> dict[str, ScopeState] | Refusal:
    """Check ``charges`` (one per scope: see :func:`held_charges`) against the scopes'
    ``states`` (all or nothing): the new states of every scope charged, or the first
    refusal met. On a refusal nothing in ``states`` has changed but the pruning of
    buckets that had left their window anyway."""
    out: dict[str, ScopeState] = {}
    for c in charges:
        state = ScopeState.opened(states.get(c.scope), c, now)
        refusal = state.refusal(c, now)
        if refusal is not None:
            return refusal
        out[c.scope] = state
    for c in charges:
        out[c.scope].add(c)
    return out


def settle_in(
    state: ScopeState | None,
    held: ScopedCharge,
    actual: ScopedCharge,
    *,
    reclaimed: bool,
) -> bool:
    """Settle one held charge in its scope: replace the hold by ``actual`` (refunding the
    unused part), or after a reclaim (the hold already refunded) add ``actual`` itself,
    in either case only while the window or bucket charged still counts. Returns
    whether ``state`` changed."""
    if state is None or not state.counts(held):
        return False
    calls, usd = (
        (actual.calls, actual.usd)
        if reclaimed
        else (
            actual.calls - held.calls,
            actual.usd - held.usd,
        )
    )
    if not calls and not usd:
        return False
    state.change(held, calls, usd)
    return True


def grant_ends(charges: Sequence[ScopedCharge], now: float) -> float:
    """When nothing a grant holds counts any more: its last window's end (a day from
    ``now`` when none is windowed). A reclaimed grant is kept until then, so that a
    late settlement still charges what was really spent."""
    ends = [c.window_ends for c in charges if c.window_ends is not None]
    return max(ends) if ends else now + 86400.0


class GrantLeases:
    """The grants one store object holds for this process, and their one renewal.

    Each grant records a holder (this object in this process) and a lease expiry.
    While any grant is outstanding, one callback is registered with the process's
    :class:`~corral.stores.leases.Renewer`; it extends every grant of the holder at once
    (the store's ``renew_grants(now)``, one statement). The last settlement releases it. A
    forked child is a new holder with nothing outstanding.
    """

    def __init__(
        self,
        renew: Callable[[float], object],
        *,
        lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
    ) -> None:
        if not lease > 0:
            raise ConfigError(f"grant_lease: must be a positive number of seconds, got {lease!r}")
        self.lease = lease
        self.renewer = RENEWER if renewer is None else renewer
        self._renew = renew
        self._lock = threading.Lock()
        self.holder = uuid.uuid4().hex
        """This process's name for itself in the store (a new one after a fork)."""
        self._mine: set[str] = set()
        self._held: Held | None = None
        self._reclaimed_at: float | None = None
        _LEASES.add(self)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self.holder = uuid.uuid4().hex
        self._mine = set()
        self._held = None  # the renewer forgot the parent's leases itself

    def granted(self, grant: str) -> None:
        """``grant`` is outstanding: renew it until :meth:`done`."""
        with self._lock:
            self._mine.add(grant)
            if self._held is None:
                self._held = self.renewer.hold(self._tick)

    def done(self, grant: str) -> None:
        """``grant`` was settled: it is renewed no more. (The renewal itself is released
        by the renewer's next tick that finds nothing outstanding: a process settling
        one grant after another does not register and release it every time.)"""
        with self._lock:
            self._mine.discard(grant)

    @property
    def outstanding(self) -> int:
        """How many of this process's grants are outstanding."""
        return len(self._mine)

    def _tick(self, now: float) -> None:
        with self._lock:
            if not self._mine:
                if self._held is not None:
                    self._held.release()
                    self._held = None
                return
        self._renew(now)

    def reclaim_due(self, now: float) -> bool:
        """Whether ``reserve`` should reclaim lapsed grants first (once per
        :data:`RECLAIM_EVERY` of ``now``, so the fast path costs nothing more)."""
        last = self._reclaimed_at
        if last is not None and last <= now < last + RECLAIM_EVERY:
            return False
        self._reclaimed_at = now
        return True

    def close(self) -> None:
        """Stop renewing (the store is closing; its grants lapse unless settled)."""
        with self._lock:
            self._mine.clear()
            if self._held is not None:
                self._held.release()
            self._held = None


_LEASES: weakref.WeakSet[GrantLeases] = weakref.WeakSet()


def _forked_leases() -> None:
    for leases in list(_LEASES):
        leases._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_leases)


@dataclass(frozen=True, kw_only=True, slots=True)
class KillSwitchState:
    scope: KillScope
    target: str = ""
    mode: KillMode | None = None
    reason: str = ""
    actor: str = ""
    set_at: float = 0.0
    """When the switch was last set (epoch seconds); the store fills it in."""


KILL_SCOPES: tuple[KillScope, ...] = get_args(KillScope)
KILL_MODES: tuple[KillMode, ...] = get_args(KillMode)
#: The longest kill-switch target, in characters. PostgreSQL keys switches by (scope, target)
#: in a B-tree, whose entries hold at most about 2.7 kB: 512 characters of UTF-8 fit.
MAX_KILL_TARGET = 512


def kill_target(scope: str, target: str | None) -> str:
    """The target a switch at ``scope`` is stored under, the same on every backend.

    ``global`` has no target (``None`` or ``""``); every other scope needs one (no
    target there is a developer mistake): text of at most :data:`MAX_KILL_TARGET`
    characters that every backend can store (no NUL, valid Unicode). Anything else
    raises :class:`~corral.exceptions.ConfigError` naming the scope.
    """
    if scope not in KILL_SCOPES:
        raise ConfigError(
            f"unknown kill-switch scope {shown(scope)} (one of {', '.join(KILL_SCOPES)})"
        )
    if target is None or target == "":
        if scope == "global":
            return ""
        raise ConfigError(f"a {scope} kill switch needs a target (which {scope}), got {target!r}")
    if not isinstance(target, str):
        raise ConfigError(
            f"a {scope} kill switch's target must be text, got {type(target).__name__}"
        )
    if scope == "global":
        raise ConfigError(f"a global kill switch has no target, got {shown(target)}")
    if len(target) > MAX_KILL_TARGET:
        raise ConfigError(
            f"a {scope} kill switch's target has at most {MAX_KILL_TARGET} characters, "
            f"got {len(target)}"
        )
    _storable(f"a {scope} kill switch's target", target)
    return target


def checked_switch(switch: KillSwitchState) -> KillSwitchState:
    """``switch`` as every backend stores it (its target from :func:`kill_target`, a known
    mode, storable text), or :class:`~corral.exceptions.ConfigError`."""
    target = kill_target(switch.scope, switch.target)
    if switch.mode is not None and switch.mode not in KILL_MODES:
        raise ConfigError(
            f"unknown kill-switch mode {shown(switch.mode)} (one of {', '.join(KILL_MODES)})"
        )
    for name in ("reason", "actor"):
        value = getattr(switch, name)
        if not isinstance(value, str):
            raise ConfigError(f"a kill switch's {name} must be text, got {type(value).__name__}")
        _storable(f"a kill switch's {name}", value)
    return switch if target == switch.target else replace(switch, target=target)


def _storable(what: str, text: str) -> None:
    # PostgreSQL's text holds no NUL, and no database holds a lone surrogate.
    if "\x00" in text:
        raise ConfigError(f"{what} may not contain a NUL character")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid Unicode text (a lone surrogate)") from None


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    status: ClaimStatus
    outcome: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimRecord:
    """An idempotency claim as stored: what ``corral idempotency list`` shows.

    ``status`` is derived when the claim is read: ``done`` once it has an outcome,
    else ``in_flight`` while its lease runs (its process renews it) and ``unknown``
    once the lease lapsed (the process died: whether the side effect happened is
    not known).
    """

    key: str
    tenant: str | None
    tool: str
    digest: str
    status: ClaimState
    created: float
    lease_until: float
    outcome: Mapping[str, Any] | None = None


def claim_state(outcome: object, lease_until: float, now: float) -> ClaimState:
    """The derived status of a claim (one rule for every backend)."""
    if outcome is not None:
        return "done"
    return "unknown" if now >= lease_until else "in_flight"


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalRecord:
    """A request for a human decision on one write, bound to (run, tool, argument digest).

    ``pending`` until decided (``approved``, ``denied``), ``expired`` at ``expires``
    (epoch seconds), ``cancelled`` by a kill switch; an approval becomes ``used`` when
    the run proceeds on it, once. ``arguments`` are redacted. ``kill_modes`` (the
    switch modes that block the call; all three unless known) and ``kill_mode`` (the
    run's ``kill_switch.mode_when_enabled``) say which kill switches cover it. See
    :mod:`corral.controls.approvals`.
    """

    id: str
    run_id: str
    tool: str
    args_digest: str
    arguments: Mapping[str, Any]
    tenant: str | None = None
    agent: str | None = None
    status: ApprovalStatus = "pending"
    approver: str = ""
    reason: str = ""
    created: float = 0.0
    expires: float = 0.0
    kill_modes: tuple[KillMode, ...] = ("stop_all", "disable_writes", "disable_expensive")
    kill_mode: KillMode | None = None
    decided_at: float | None = None
    used_at: float | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    """What the approver is told besides the action (redacted): ``step``, ``call_id``,
    ``purpose`` (the model's text of that turn), ``cost_usd``, ``effect``,
    ``idempotency_key`` (see :class:`~corral.gateway.guards.approval.ApprovalRequest`)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerState:
    state: Literal["closed", "open", "half_open"] = "closed"
    until: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradeCounts:
    """What one tool (or model endpoint) saw in one window bucket: attempts, failures, retries."""

    calls: int = 0
    failures: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class DegradeWindow:
    """The sliding degrade window at a moment, from two UTC-aligned buckets of its length.

    ``current`` is the bucket covering the moment, ``previous`` the one before it, and
    ``weight`` the share of ``previous`` still inside the window (1 at the start of
    ``current``, 0 at its end): each total is ``current + weight x previous``, the
    standard sliding-window estimate.
    """

    current: DegradeCounts = field(default_factory=DegradeCounts)
    previous: DegradeCounts = field(default_factory=DegradeCounts)
    weight: float = 0.0

    @property
    def calls(self) -> float:
        return self.current.calls + self.weight * self.previous.calls

    @property
    def failures(self) -> float:
        return self.current.failures + self.weight * self.previous.failures

    @property
    def retries(self) -> float:
        return self.current.retries + self.weight * self.previous.retries


def degrade_bucket(now: float, size: float) -> tuple[float, float]:
    """The start of the bucket of length ``size`` covering ``now``, and the previous
    bucket's weight in the window (see :class:`DegradeWindow`)."""
    start = math.floor(now / size) * size
    return start, max(0.0, min(1.0, 1.0 - (now - start) / size))


def retry_fits(window: DegradeWindow, *, ratio: float, floor: int) -> bool:
    """Whether one more retry stays within ``ratio`` x calls + ``floor`` over ``window``.

    One rule for every backend that checks in Python (PostgreSQL checks the same in SQL).
    """
    return window.retries + 1 <= ratio * window.calls + floor


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRecord:
    id: str
    tenant: str | None = None
    agent: str | None = None
    status: Literal["running", "ok", "stopped", "error", "interrupted"] = "running"
    stop_reason: str | None = None
    stop: Mapping[str, Any] | None = None
    task: str = ""
    answer: str | None = None
    usage: Mapping[str, Any] = field(default_factory=dict)
    policy_digest: str = ""
    started_at: float = 0.0
    ended_at: float | None = None
    would_stop: Sequence[Mapping[str, Any]] = ()
    owner: RunOwner | None = None
    """The process running the run; the store fills it in when the run starts or resumes."""
    heartbeat_at: float | None = None
    """The last time (epoch seconds) the owner wrote to the run; the store keeps it."""
    kill_mode: KillMode | None = None
    """The mode a kill switch set without one applies to this run (its policy's
    ``kill_switch.mode_when_enabled``); ``None`` for a run recorded before it was kept."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One trace event: a step, a model call, a decision, a tool outcome, the stop.

    ``tenant`` and ``actor`` (the agent, or the operator who acted) travel with each
    event into the audit log.
    """

    run_id: str
    seq: int
    kind: str
    at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    tenant: str | None = None
    actor: str | None = None


#: The ``prev_hash`` of the first audit record.
GENESIS = "0" * 64


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One record of the audit log: an event as appended, sealed into the hash chain.

    ``seq`` counts records from 1 across the whole store, without gaps; ``hash``
    covers every other field (see :func:`corral.stores.chain.record_hash`); ``mode``
    says how: ``sha256``, or ``hmac-sha256:<key id>`` when keyed.
    """

    seq: int
    run_id: str
    event_seq: int
    kind: str
    at: float
    tenant: str | None
    actor: str | None
    data: Any
    prev_hash: str
    hash: str
    mode: str

    @property
    def tool(self) -> str | None:
        """The tool the record concerns, if any."""
        tool = self.data.get("tool") if isinstance(self.data, Mapping) else None
        return tool if isinstance(tool, str) else None

    @property
    def args_digest(self) -> str | None:
        """SHA-256 of the call's canonical arguments, if the record concerns a call."""
        digest = self.data.get("args_digest") if isinstance(self.data, Mapping) else None
        return digest if isinstance(digest, str) else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (one line of ``corral audit export``)."""
        return {
            "seq": self.seq,
            "run_id": self.run_id,
            "event_seq": self.event_seq,
            "kind": self.kind,
            "at": self.at,
            "tenant": self.tenant,
            "actor": self.actor,
            "tool": self.tool,
            "args_digest": self.args_digest,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
            "mode": self.mode,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditHead:
    """The newest record of the audit log (``seq`` 0 and :data:`GENESIS` when empty)."""

    seq: int = 0
    hash: str = GENESIS


def decide_pending(
    store: Store, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
) -> ApprovalRecord:
    """``decide_approval`` for every backend: move a pending approval to ``status`` through
    ``transition_approval``; one already decided keeps (and returns) its first decision.
    Raises ``KeyError`` for an unknown id."""
    changed = store.transition_approval(
        approval_id,
        expect="pending",
        status=status,
        at=time.time(),
        approver=approver,
        reason=reason,
    )
    if changed is not None:
        return changed
    found = store.get_approval(approval_id)
    if found is None:
        raise KeyError(approval_id)
    return found


@runtime_checkable
class Store(Protocol):
    """What corral needs from shared state. See the module docstring."""

    # runs and trace
    def create_run(self, record: RunRecord) -> None: ...
    def update_run(self, run_id: str, **changes: Any) -> None: ...
    def get_run(self, run_id: str) -> RunRecord | None: ...
    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]: ...
    def append_events(self, events: Sequence[Event]) -> None: ...
    def events(self, run_id: str) -> list[Event]: ...
    def heartbeat(self, run_id: str) -> None: ...
    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]: ...

    # audit log: the events, in the order of the chain
    def audit_head(self) -> AuditHead: ...
    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...

    # shared budgets
    def reserve(self, charges: Sequence[ScopedCharge], *, now: float) -> str | Refusal: ...
    def settle(self, grant: str, actual: Sequence[ScopedCharge]) -> None: ...
    def renew_grants(self, now: float) -> int: ...
    def reclaim(self, now: float) -> int: ...
    def scope_usage(self, scope: str) -> tuple[int, Decimal]: ...

    # kill switch
    def kill_switches(self) -> list[KillSwitchState]: ...
    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None: ...
    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool: ...

    # approvals
    def create_approval(self, record: ApprovalRecord) -> None: ...
    def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...
    def decide_approval(
        self, approval_id: str, status: ApprovalStatus, *, approver: str, reason: str = ""
    ) -> ApprovalRecord: ...
    def transition_approval(
        self,
        approval_id: str,
        *,
        expect: ApprovalStatus,
        status: ApprovalStatus,
        at: float,
        approver: str | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord | None: ...
    def list_approvals(
        self,
        *,
        status: ApprovalStatus | None = "pending",
        tenant: str | None = None,
        run_id: str | None = None,
    ) -> list[ApprovalRecord]: ...

    # idempotency: a claim is held under a lease its process renews (``renew_claim``)
    def claim(
        self,
        key: str,
        digest: str,
        *,
        tenant: str | None,
        now: float,
        lease: float,
        tool: str = "",
    ) -> Claim: ...
    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None: ...
    def release(self, key: str, *, tenant: str | None) -> None: ...
    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        """Extend the lease of ``key`` to ``now + lease`` if it has no outcome yet."""
        ...

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        """The claim of ``key``, read only (``None`` when there is none)."""
        ...

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        """Claims, oldest first; only ``status`` ones and only ``tenant``'s when given."""
        ...

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        """Settle an ``unknown`` claim (no outcome, lease lapsed at ``now``), atomically.

        ``outcome`` given: it is stored (the claim is done). ``outcome`` None: the side
        effect did not happen; with ``lease`` the caller takes the claim over (in flight
        again, held for ``lease`` seconds, to run the tool itself), without it the claim
        is deleted (the key is free). ``False`` when the claim is not unknown (another
        process settled it first, it has an outcome, or its lease still runs).
        """
        ...

    # breakers
    def breaker(self, name: str, *, now: float) -> BreakerState: ...
    def set_breaker(self, name: str, state: BreakerState) -> None: ...

    # degrade counters (the breaker's window and the retry budget)
    def degrade_add(
        self, name: str, *, now: float, size: float, calls: int = 0, failures: int = 0
    ) -> DegradeWindow: ...
    def degrade_retry(
        self, name: str, *, now: float, size: float, ratio: float, floor: int, calls: int = 0
    ) -> bool: ...
    def degrade_reset(self, name: str) -> None: ...

    def close(self) -> None: ...
