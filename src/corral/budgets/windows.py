"""Limits that span runs: per tenant, agent, tool or fleet, over UTC-aligned windows.

A run's reservation covers its own budgets (in-process) and every window limit
that applies, at once, in the store (all or nothing, with the database's own
atomicity), so many runs in many processes sharing a tenant budget cannot pass
it: the zero-overshoot guarantee. A refusal names the scope and when its window
reopens (``max_usd:tenant/1d (limit 50.00, would be 50.70)``, ``retry_after``).

Limit entries on the same subject and window share one scope, and every scope counts
both tool calls and USD: ``{per: tenant, window: 1d, max_usd: 1}`` and
``{per: tenant, window: 1d, max_calls: 100}`` enforce both caps on one usage, counted
once. A calendar window is one scope per period (``tenant:acme/1d@<start>``), which starts
from zero. A *rolling* window of length W is one scope (``tenant:acme/1d rolling``)
whose usage is kept in sub-buckets of W/60, aligned to multiples of W/60 since the
epoch: a charge at ``t`` goes to the bucket holding ``t``, and counts until W after
that bucket *ends*. So the scope's usage at ``t`` is the sum of every bucket that
overlaps ``[t - W, t]`` (61 of them): conservative, a W-long span never admits more
than the cap; at most W/60 more than W is looked back over. A rolling refusal's
``retry_after`` is when enough buckets, oldest first, have aged out for the charge
to fit.

>>> from corral.policy import Policy
>>> p = Policy.from_dict({"limits": [{"per": "tenant", "window": "1h", "max_usd": 5,
...                                   "rolling": True}]})
>>> c = scoped(p, Charge(usd=Decimal(1)), tenant="acme", agent=None, now=7230.5)[0]
>>> c.scope, c.window_ends, c.rolling
('tenant:acme/1h rolling', 10860.0, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from corral.budgets.meter import Charge
from corral.exceptions import Stop
from corral.stops import StopReason
from corral.stores.base import Refusal, ScopedCharge

if TYPE_CHECKING:
    from corral.policy.schema import Policy, WindowLimit

ZERO = Decimal(0)
#: A rolling window is counted in this many sub-buckets (plus the one it partly overlaps).
BUCKETS = 60


def _subject(limit: WindowLimit, *, tenant: str | None, agent: str | None) -> str | None:
    if limit.per == "global":
        return "*"
    if limit.per == "tenant":
        return tenant or "-"
    if limit.per == "agent":
        return agent or "-"
    return limit.tool


_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


@functools.lru_cache(maxsize=256)
def window_length(window: str) -> tuple[int, str]:
    """A policy window (``15m``, ``24h``, ``1d``: validated by the policy) as seconds and
    the name its scopes and stops use, in the largest unit it is a whole number of (``24h``
    and ``1440m`` are both ``1d``): windows of one length are one scope. Cached: this runs
    on every reservation under a window limit."""
    seconds = int(window[:-1]) * _UNIT_SECONDS[window[-1]]
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return seconds, f"{seconds // size}{unit}"
    return seconds, f"{seconds // 60}m"


def scoped(
    policy: Policy, charge: Charge, *, tenant: str | None, agent: str | None, now: float
) -> list[ScopedCharge]:
    """The shared-scope charges that ``charge`` makes under ``policy``'s window limits.

    One charge per scope (per, subject, window length, calendar or rolling): limit
    entries naming the same scope share it, each cap enforced (the tightest of each
    dimension). Every scope counts both tool calls and USD, whichever caps a policy
    puts on it, so runs under policies capping one tenant differently see one usage.
    """
    calls, usd = charge.tool_calls, charge.usd
    if not calls and not usd:
        return []
    out: dict[str, ScopedCharge] = {}
    for limit in policy.limits:
        if limit.per == "tool" and charge.tool != limit.tool:
            continue
        size, label = window_length(limit.window)
        subject = _subject(limit, tenant=tenant, agent=agent)
        if limit.rolling:
            bucket = size / BUCKETS
            start = math.floor(now / bucket) * bucket
            scope, ends = f"{limit.per}:{subject}/{label} rolling", start + bucket + size
        else:
            start = math.floor(now / size) * size
            scope, ends = f"{limit.per}:{subject}/{label}@{start}", start + size
        same = out.get(scope)
        out[scope] = ScopedCharge(
            scope=scope,
            calls=calls,
            usd=usd,
            max_calls=_tightest(limit.max_calls, same.max_calls if same else None),
            max_usd=_tightest(limit.max_usd, same.max_usd if same else None),
            window_ends=float(ends),
            rolling=limit.rolling,
        )
    return list(out.values())


def _tightest(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def settled(held: Sequence[ScopedCharge], actual: Charge) -> list[ScopedCharge]:
    """What each held scope is settled to, given what the action actually used: its
    tool calls and USD, in every scope (each counts both)."""
    return [
        ScopedCharge(
            scope=h.scope,
            calls=actual.tool_calls,
            usd=actual.usd,
            window_ends=h.window_ends,
            rolling=h.rolling,
        )
        for h in held
    ]


def refusal_stop(refusal: Refusal, tool: str | None) -> Stop:
    """The stop for a window refusal: ``max_usd:tenant/1d (limit 1.00, would be 1.10)``."""
    per, _, rest = refusal.scope.partition(":")
    # The window is after the last "/" (a tenant or agent name may hold one itself).
    window = rest.rpartition("/")[2].split("@", 1)[0] if "/" in rest else ""
    label = f"{per}/{window}"
    reason: StopReason = "max_usd" if refusal.dimension == "usd" else "max_tool_calls"
    if refusal.retry_after is None:
        reopens = ""
    elif window.endswith(" rolling"):
        reopens = f"; enough of it ages out in {refusal.retry_after:.0f} s"
    else:
        reopens = f"; the window reopens in {refusal.retry_after:.0f} s"
    return Stop(
        reason,
        label,
        scope=label,
        tool=tool,
        limit=refusal.limit,
        observed=refusal.would_be,
        retryable=True,
        retry_after=refusal.retry_after,
        message=f"the {label} limit ({refusal.limit}) would be passed "
        f"({refusal.would_be}){reopens}",
    )
