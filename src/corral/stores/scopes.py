"""Scoped reservations: one rule for checking and charging budget scopes.

A reservation charges several budget scopes (tenant, agent, tool, each window) at
once, all or nothing, refusals naming the scope. Refunds and late charges apply only
while the window (or a rolling scope's sub-bucket) charged still counts. The Python
stores share one rule for all of this (:func:`reserve_in`, :func:`settle_in`,
:class:`ScopeState`); PostgreSQL runs the same in SQL. Every backend first passes
what it is given through :func:`held_charges` and :func:`settled_charges`: figures
are checked (a negative, non-finite or ill-typed one is a :class:`ValueError`, and
nothing changes), and entries naming one scope are merged, so a scope's usage is
counted once whatever list it came in. Imports nothing of corral but ``_safe``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from corral._safe import shown


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
