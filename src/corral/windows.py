"""Limits that span runs: per tenant, agent, tool or fleet, over UTC-aligned windows.

A run's reservation covers its own budgets (in-process) and every window limit
that applies, at once, in the store (all or nothing, with the database's own
atomicity), so many runs in many processes sharing a tenant budget cannot pass
it: the zero-overshoot guarantee. A refusal names the scope and when its window
reopens (``max_usd:tenant/1d (limit 50.00, would be 50.70)``, ``retry_after``).

A calendar window is one scope per period (``tenant:acme/1d@<start>``), which starts
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

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from .budgets import Charge
from .exceptions import Stop
from .stops import StopReason
from .stores.base import Refusal, ScopedCharge

if TYPE_CHECKING:
    from .policy import Policy, WindowLimit

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


def scoped(
    policy: Policy, charge: Charge, *, tenant: str | None, agent: str | None, now: float
) -> list[ScopedCharge]:
    """The shared-scope charges that ``charge`` makes under ``policy``'s window limits."""
    out: list[ScopedCharge] = []
    for limit in policy.limits:
        if limit.per == "tool" and charge.tool != limit.tool:
            continue
        calls = charge.tool_calls if limit.max_calls is not None else 0
        usd = charge.usd if limit.max_usd is not None else ZERO
        if not calls and not usd:
            continue
        size = limit.seconds
        subject = _subject(limit, tenant=tenant, agent=agent)
        if limit.rolling:
            bucket = size / BUCKETS
            start = math.floor(now / bucket) * bucket
            scope, ends = f"{limit.per}:{subject}/{limit.window} rolling", start + bucket + size
        else:
            start = math.floor(now / size) * size
            scope, ends = f"{limit.per}:{subject}/{limit.window}@{start}", start + size
        out.append(
            ScopedCharge(
                scope=scope,
                calls=calls,
                usd=usd,
                max_calls=limit.max_calls,
                max_usd=limit.max_usd,
                window_ends=float(ends),
                rolling=limit.rolling,
            )
        )
    return out


def settled(held: Sequence[ScopedCharge], actual: Charge) -> list[ScopedCharge]:
    """What each held scope is settled to, given what the action actually used."""
    return [
        ScopedCharge(
            scope=h.scope,
            calls=actual.tool_calls if h.calls else 0,
            usd=actual.usd if h.max_usd is not None else ZERO,
            window_ends=h.window_ends,
            rolling=h.rolling,
        )
        for h in held
    ]


def refusal_stop(refusal: Refusal, tool: str | None) -> Stop:
    per, _, rest = refusal.scope.partition(":")
    window = rest.split("/", 1)[1].split("@", 1)[0] if "/" in rest else ""
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
