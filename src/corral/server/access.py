"""What a key may read and change, as the ``/v1`` API and the dashboard both do it: the
runs it may list, a run or an approval it may see (another tenant's answers as missing),
approvals decided, kill switches turned on and off and shown.

Every function takes the store and the request's :class:`~corral.controls.keys.Principal`
and checks :func:`~corral.controls.keys.permits` itself, so that a page and an endpoint
cannot disagree on who may do what.

Imports the controls, the record's views, the stores and the server's auth and errors.
"""

from __future__ import annotations

from corral.controls import approvals, killswitch
from corral.controls.keys import Action, Principal
from corral.server.auth import may_see, require, visible_tenant
from corral.server.errors import NotFound
from corral.stores.base import (
    ApprovalRecord,
    KillMode,
    KillScope,
    KillSwitchState,
    RunRecord,
    Store,
)

__all__ = [
    "actor",
    "approval_for",
    "decide",
    "disable_switch",
    "enable_switch",
    "find_runs",
    "run_for",
    "sees_switch",
    "switch_tenant",
    "switches_for",
]


def actor(who: Principal) -> str:
    """Who a decision or a switch is recorded as: the key's name, else its id."""
    return who.name or f"key {who.key_id}"


def find_runs(
    store: Store,
    who: Principal,
    *,
    tenant: str | None = None,
    agent: str | None = None,
    status: str | None = None,
    stop_reason: str | None = None,
    limit: int = 100,
) -> list[RunRecord]:
    """The runs ``who`` may read, newest first, filtered (``None``: any); asking for
    another tenant's is refused (403)."""
    scope = visible_tenant(who, tenant)
    require(who, Action.RUNS_READ, scope if who.tenant is not None else who.tenant)
    return [
        r
        for r in store.list_runs(limit=limit, tenant=scope)
        if (agent is None or r.agent == agent)
        and (status is None or r.status == status)
        and (stop_reason is None or r.stop_reason == stop_reason)
    ]


def run_for(store: Store, who: Principal, run_id: str, action: Action) -> RunRecord:
    """The run ``run_id`` if ``who`` may do ``action`` on it; :class:`NotFound` otherwise."""
    record = store.get_run(run_id)
    if record is None:
        raise NotFound(f"no run {run_id!r}")
    may_see(who, action, record.tenant, f"run {run_id!r}")
    return record


def approval_for(store: Store, who: Principal, approval_id: str) -> ApprovalRecord:
    """The approval ``approval_id`` if ``who`` may read it; :class:`NotFound` otherwise."""
    record = store.get_approval(approval_id)
    if record is None:
        raise NotFound(f"no approval {approval_id!r}")
    may_see(who, Action.APPROVALS_READ, record.tenant, f"approval {approval_id!r}")
    return record


def decide(
    store: Store, who: Principal, approval_id: str, verb: str, reason: str
) -> ApprovalRecord:
    """Approve (``verb`` ``approve``) or deny the request ``approval_id`` as ``who``;
    403 for a key that may not decide for its tenant, 409 when it is no longer pending."""
    record = approval_for(store, who, approval_id)
    require(who, Action.APPROVALS_DECIDE, record.tenant)
    act = approvals.approve if verb == "approve" else approvals.deny
    return act(store, approval_id, approver=actor(who), reason=reason)


def switch_tenant(store: Store, scope: str, target: str) -> str | None:
    """The tenant a switch concerns: its own for ``tenant``, the run's for ``run``;
    ``None`` (every tenant: only a global key) for the others."""
    if scope == "tenant":
        return target
    if scope == "run":
        run = store.get_run(target)
        return run.tenant if run is not None else None
    return None


def sees_switch(store: Store, who: Principal, sw: KillSwitchState) -> bool:
    """Whether ``who`` is shown ``sw``: every key sees the fleet-wide ones (they stop its
    tenant's calls too), a tenant's key only its own tenant's and runs' otherwise."""
    if who.tenant is None or sw.scope in ("global", "agent", "tool"):
        return True
    return switch_tenant(store, sw.scope, sw.target) == who.tenant


def switches_for(store: Store, who: Principal) -> list[KillSwitchState]:
    """The switches that are on and that ``who`` may see (403 for a key that may not
    read the kill switch's status)."""
    require(who, Action.KILL_STATUS, who.tenant)
    return [sw for sw in store.kill_switches() if sees_switch(store, who, sw)]


def enable_switch(
    store: Store,
    who: Principal,
    *,
    scope: KillScope,
    target: str,
    mode: KillMode | None,
    reason: str,
) -> KillSwitchState:
    """Turn a switch on as ``who`` (403 unless it may toggle it for the tenant it
    concerns), and cancel the pending approvals it covers, as ``corral kill enable`` does;
    a ``ConfigError`` (400) for a switch that cannot mean anything."""
    checked = killswitch.check_switch(scope, target, mode)
    require(who, Action.KILL_TOGGLE, switch_tenant(store, scope, checked))
    sw = killswitch.enable(
        store, scope=scope, target=checked, mode=mode, reason=reason, actor=actor(who)
    )
    approvals.cancel_covered(store, sw)
    return sw


def disable_switch(
    store: Store, who: Principal, *, scope: KillScope, target: str, reason: str
) -> bool:
    """Turn the switch at ``scope``/``target`` off as ``who``; ``False`` if none was on."""
    checked = killswitch.check_switch(scope, target)
    require(who, Action.KILL_TOGGLE, switch_tenant(store, scope, checked))
    return killswitch.disable(store, scope=scope, target=checked, reason=reason, actor=actor(who))
