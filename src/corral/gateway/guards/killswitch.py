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
``control_plane_unavailable`` (see :mod:`corral.controls.killswitch`).

Calls in flight. :func:`watch` gives the drivers (``gateway/drivers.py``) a check to make
while a call runs, at most every :data:`WATCH_SECONDS`: when a switch whose mode
(its own, or the run's default) is ``stop_all`` comes to cover the call, the driver
cancels it where it can (an async tool or model call: its task is cancelled; a sync
tool in a worker thread: it is abandoned, like at a deadline) and hands the flow a
:class:`Cancelled`; the run stops with ``kill_switch``. A read that fails while a
call runs cancels nothing (the next check fails closed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from corral.controls.killswitch import describe
from corral.exceptions import Stop, StoreError, StoreGone
from corral.stores.base import KillMode, KillSwitchState

if TYPE_CHECKING:
    from corral.gateway.state import Effective, RunState


#: How often a call in flight looks at the switches (seconds); each look is a cached read.
WATCH_SECONDS = 0.1


class Cancelled(Exception):
    """A call in flight cancelled by a ``stop_all`` switch: what a driver hands back to the
    flow, carrying the run's stop (``kill_switch``). Never escapes a flow."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(str(stop))
        self.stop = stop


def _covers(sw: KillSwitchState, core: RunState, tool: str | None) -> bool:
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


def active(core: RunState) -> tuple[KillSwitchState, ...]:
    """The active switches as the run sees them (through the process's cache).

    Raises ``control_plane_unavailable`` when the state cannot be read (fail closed).
    """
    try:
        return core.switch_cache.switches(core.store)
    except StoreError as exc:
        gone = isinstance(exc, StoreGone)  # the store file was removed: retrying cannot help
        raise core.stamp(
            Stop("control_plane_unavailable", "kill_switch", message=str(exc), retryable=not gone)
        ) from exc


def blocking_switch(
    core: RunState, name: str | None, eff: Effective | None
) -> KillSwitchState | None:
    """The first active switch that blocks this call (``name=None``: a model call).

    Raises ``control_plane_unavailable`` when the state cannot be read (fail closed).
    """
    return blocking_among(active(core), core, name, eff)


def blocking_among(
    switches: tuple[KillSwitchState, ...], core: RunState, name: str | None, eff: Effective | None
) -> KillSwitchState | None:
    """The first of ``switches`` (read with :func:`active`) that blocks this call: one read
    of the switches judges several tools alike."""
    if not switches:
        return None
    default = core.policy.kill_switch.mode_when_enabled
    for sw in switches:
        if _covers(sw, core, name) and _blocks(sw.mode or default, eff):
            return sw
    return None


def check(core: RunState, name: str | None, eff: Effective | None) -> None:
    """Raise ``kill_switch`` if a switch blocks this call (``name=None``: a model call)."""
    sw = blocking_switch(core, name, eff)
    if sw is None:
        return
    raise core.stamp(_stop(core, sw, name))


def _stop(
    core: RunState, sw: KillSwitchState, name: str | None, *, in_flight: bool = False
) -> Stop:
    mode = sw.mode or core.policy.kill_switch.mode_when_enabled
    where = describe(sw)
    extra: dict[str, object] = {"mode": mode}
    if sw.actor:
        extra["set_by"] = sw.actor
    if in_flight:
        extra["cancelled_in_flight"] = True
    return Stop(
        "kill_switch",
        name or "model",
        tool=name,
        scope=where,
        message=f"{mode} is on ({where})"
        + (f": {sw.reason}" if sw.reason else "")
        + ("; the call in flight was cancelled" if in_flight else ""),
        retryable=False,
        extra=extra,
    )


def watch(core: RunState, name: str | None) -> Callable[[], Cancelled | None]:
    """The check a driver makes while a call of ``name`` runs (``None``: a model call).

    Returns a :class:`Cancelled` once a ``stop_all`` switch covers the call, else
    ``None``; reads the switches through the process's cache. Built once per run and
    name (it depends on nothing else), since every call asks for it.
    """
    found = core.watches.get(name)
    if found is None:
        found = core.watches[name] = _watch(core, name)
    return found


def _watch(core: RunState, name: str | None) -> Callable[[], Cancelled | None]:
    default = core.policy.kill_switch.mode_when_enabled

    def check_in_flight() -> Cancelled | None:
        try:
            switches = core.switch_cache.switches(core.store)
        except StoreError:
            return None  # unknown is not stop_all: the next check before a call fails closed
        for sw in switches:
            if (sw.mode or default) == "stop_all" and _covers(sw, core, name):
                return Cancelled(_stop(core, sw, name, in_flight=True))
        return None

    return check_in_flight
