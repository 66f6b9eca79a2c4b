"""Rules every backend applies the same way: which kill switches it accepts, a claim's
derived status, the degrade window's buckets and the retry budget.

Pure functions over :mod:`corral.stores.records`; PostgreSQL checks the degrade and
retry rules in SQL too. Imports nothing of corral but ``_safe``, the exceptions and
the records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, get_args

from corral._safe import shown
from corral.exceptions import ConfigError
from corral.stores.records import ClaimState, DegradeWindow, KillMode, KillScope, KillSwitchState

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


def claim_state(outcome: object, lease_until: float, now: float) -> ClaimState:
    """The derived status of a claim (one rule for every backend)."""
    if outcome is not None:
        return "done"
    return "unknown" if now >= lease_until else "in_flight"


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


def tenant_key(tenant: str | None) -> str:
    """``''`` for no tenant, ``':' + tenant`` otherwise: the two never collide."""
    return "" if tenant is None else ":" + tenant


def claim_filter(
    of_tenant: str,
    by_status: Mapping[str, str],
    *,
    tenant: str | None,
    status: ClaimState | None,
    now: float,
) -> tuple[list[str], list[Any]]:
    """The conditions (in a backend's own SQL: ``of_tenant``, ``by_status``) and their
    parameters that list the claims of ``tenant`` in ``status`` (None: any); the unknown
    and in-flight conditions compare the lease with ``now``."""
    where: list[str] = []
    params: list[Any] = []
    if tenant is not None:
        where.append(of_tenant)
        params.append(tenant_key(tenant))
    condition = None if status is None else by_status.get(status)
    if condition is not None:
        where.append(condition)
        if status != "done":
            params.append(now)
    return where, params
