"""Kill switch: refuse what an active switch covers (global, tenant, agent, tool, run).

Which calls a switch covers depends on its scope: ``global`` every run; ``tenant``,
``agent`` and ``run`` the runs with that tenant, agent or id; ``tool`` the calls of
that tool (never a model call). What it blocks among them depends on its mode, one
rule for every scope; a switch without a mode takes the run's
``kill_switch.mode_when_enabled``:

- ``stop_all``: every tool call and every model call;
- ``disable_writes``: tool calls whose effect is ``write``;
- ``disable_expensive``: tool calls of tools marked ``expensive`` or costing at least
  ``kill_switch.expensive_cost_usd``.

So a mode-less ``tool/kb.read`` switch under ``disable_writes`` blocks nothing (the
tool is a read): name ``stop_all`` to turn a tool off whatever it is. Never
observe-only. When the state cannot be read for 2 s, every check refuses with
``control_plane_unavailable`` (see :mod:`corral.killswitch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import Stop, StoreError
from ..killswitch import active, describe
from ..stores.base import KillMode, KillSwitchState

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore


def _covers(sw: KillSwitchState, core: RunCore, tool: str | None) -> bool:
    scope = sw.scope
    if scope == "global":
        return True
    if scope == "tool":
        return tool is not None and sw.target == tool
    if scope == "run":
        return sw.target == core.id
    if scope == "tenant":
        return sw.target == core.tenant
    return scope == "agent" and sw.target == core.agent


def _blocks(mode: KillMode, eff: Effective | None) -> bool:
    if mode == "stop_all":
        return True
    if eff is None:  # a model call, or a tool name nobody registered
        return False
    if mode == "disable_writes":
        return eff.effect == "write"
    return eff.expensive


def blocking_switch(
    core: RunCore, name: str | None, eff: Effective | None
) -> KillSwitchState | None:
    """The first active switch that blocks this call (``name=None``: a model call).

    Raises ``control_plane_unavailable`` when the state cannot be read (fail closed).
    """
    try:
        switches = active(core.store)
    except StoreError as exc:
        raise core.stamp(
            Stop("control_plane_unavailable", "kill_switch", message=str(exc), retryable=True)
        ) from exc
    if not switches:
        return None
    default = core.policy.kill_switch.mode_when_enabled
    for sw in switches:
        if _covers(sw, core, name) and _blocks(sw.mode or default, eff):
            return sw
    return None


def check(core: RunCore, name: str | None, eff: Effective | None) -> None:
    """Raise ``kill_switch`` if a switch blocks this call (``name=None``: a model call)."""
    sw = blocking_switch(core, name, eff)
    if sw is None:
        return
    mode = sw.mode or core.policy.kill_switch.mode_when_enabled
    where = describe(sw)
    raise core.stamp(
        Stop(
            "kill_switch",
            name or "model",
            tool=name,
            scope=where,
            message=f"{mode} is on ({where})" + (f": {sw.reason}" if sw.reason else ""),
            retryable=False,
            extra={"mode": mode, "set_by": sw.actor} if sw.actor else {"mode": mode},
        )
    )
