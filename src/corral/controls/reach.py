"""Which running runs a kill switch reaches in a store, and the mode each one applies.

A run counts while its record says ``running`` and its process is alive or its
heartbeat recent (:func:`corral.stores.owner.interruption`: the rule the stores use to
mark dead runs ``interrupted``). A switch set with a mode applies that mode to every run
it covers; one set without applies each run's ``kill_switch.mode_when_enabled``, which
the run record keeps (``RunRecord.kill_mode``, written when the run starts or resumes; a
run recorded by an older corral has none, and its mode shows as unknown).

Used by ``corral kill enable`` and the dashboard's kill-switch page. Imports the stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

from corral.stores.base import KillMode, KillSwitchState, RunRecord, Store
from corral.stores.owner import RUN_LEASE_SECONDS, interruption

ModeSource = Literal["switch", "policy", "unknown"]

#: How many of the newest runs :func:`reach` looks through by default.
SCAN_LIMIT = 10_000

#: What each mode refuses, in a few words.
EFFECTS: dict[str, str] = {
    "stop_all": "every tool and model call refused, calls in flight cancelled",
    "disable_writes": "writes refused; reads and model calls go on",
    "disable_expensive": "expensive tools refused; the rest goes on",
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Group:
    """The running runs of one tenant and agent that apply one mode."""

    tenant: str | None
    agent: str | None
    mode: KillMode | None
    source: ModeSource
    run_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reach:
    """The running runs a switch covers, grouped; ``scanned_all`` is false when the store
    held more runs than :data:`SCAN_LIMIT` (older running runs were not looked at)."""

    groups: tuple[Group, ...]
    scanned_all: bool

    @property
    def runs(self) -> int:
        return sum(len(g.run_ids) for g in self.groups)


def reach(
    store: Store,
    switch: KillSwitchState,
    *,
    now: float | None = None,
    limit: int = SCAN_LIMIT,
    tenant: str | None = None,
) -> Reach:
    """The running runs ``switch`` covers in ``store`` (of ``tenant`` only, when given)
    and the mode each applies, looking through the newest ``limit`` runs."""
    moment = time.time() if now is None else now
    if switch.scope == "run":
        found = store.get_run(switch.target)
        records, scanned_all = ([found] if found is not None else []), True
    else:
        records = store.list_runs(limit=limit, tenant=tenant)
        scanned_all = len(records) < limit
    running = [
        r
        for r in records
        if live(r, moment) and covers(switch, r) and (tenant is None or r.tenant == tenant)
    ]
    found_groups: dict[tuple[str | None, str | None, str | None, str], list[str]] = {}
    for record in running:
        mode, source = _mode(switch, record)
        found_groups.setdefault((record.tenant, record.agent, mode, source), []).append(record.id)
    groups = [
        Group(
            tenant=tenant,
            agent=agent,
            mode=cast(KillMode | None, mode),
            source=cast(ModeSource, source),
            run_ids=tuple(ids),
        )
        for (tenant, agent, mode, source), ids in found_groups.items()
    ]
    groups.sort(key=lambda g: (g.tenant or "", g.agent or "", g.mode or ""))
    return Reach(groups=tuple(groups), scanned_all=scanned_all)


def live(record: RunRecord, now: float) -> bool:
    """Whether ``record`` is a run still running (its process alive, or its heartbeat
    recent)."""
    if record.status != "running":
        return False
    why = interruption(
        record.owner, heartbeat_at=record.heartbeat_at, now=now, lease=RUN_LEASE_SECONDS
    )
    return why is None


def covers(switch: KillSwitchState, record: RunRecord) -> bool:
    """Whether ``switch`` applies to the run ``record``."""
    # A tool switch covers every run: it applies to each run's calls of that tool.
    if switch.scope == "tenant":
        return record.tenant == switch.target
    if switch.scope == "agent":
        return record.agent == switch.target
    if switch.scope == "run":
        return record.id == switch.target
    return True


def _mode(switch: KillSwitchState, record: RunRecord) -> tuple[str | None, str]:
    if switch.mode is not None:
        return switch.mode, "switch"
    return (record.kill_mode, "policy") if record.kill_mode is not None else (None, "unknown")
