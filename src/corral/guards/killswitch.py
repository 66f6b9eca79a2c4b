"""Kill switch: refuse what an active switch covers (global, tenant, agent, tool, run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import Stop
from ..stores.base import KillSwitchState

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore


def _covers(sw: KillSwitchState, core: RunCore, tool: str | None) -> bool:
    if sw.scope == "global":
        return True
    if sw.scope == "tenant":
        return sw.target == core.tenant
    if sw.scope == "agent":
        return sw.target == core.agent
    if sw.scope == "run":
        return sw.target == core.id
    return tool is not None and sw.scope == "tool" and sw.target == tool


def blocking_switch(
    core: RunCore, name: str | None, eff: Effective | None
) -> KillSwitchState | None:
    """The first active switch that blocks this call (``name=None``: a model call)."""
    switches = core._store_call(core.store.kill_switches)
    for sw in switches:
        if not _covers(sw, core, name):
            continue
        mode = sw.mode or core.policy.kill_switch.mode_when_enabled
        if mode == "stop_all" or (
            sw.scope in ("tool", "run") and sw.mode is None and name is not None
        ):
            return sw
        if eff is None:
            continue
        if mode == "disable_writes" and eff.effect == "write":
            return sw
        if mode == "disable_expensive" and eff.expensive:
            return sw
    return None


def check(core: RunCore, name: str | None, eff: Effective | None) -> None:
    """Raise ``kill_switch`` if a switch covers this call. Never observe-only."""
    sw = blocking_switch(core, name, eff)
    if sw is not None:
        mode = sw.mode or core.policy.kill_switch.mode_when_enabled
        subject = name or "model"
        raise core.stamp(
            Stop(
                "kill_switch",
                subject,
                tool=name,
                scope=f"{sw.scope}/{sw.target}" if sw.target else sw.scope,
                message=f"{mode} is on ({sw.scope}{'/' + sw.target if sw.target else ''})"
                + (f": {sw.reason}" if sw.reason else ""),
                retryable=False,
            )
        )
