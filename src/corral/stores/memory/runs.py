"""Runs in memory: their records, owners and heartbeats (the runs concern)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from corral.stores.memory.state import MemoryState
from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption
from corral.stores.records import Event, RunRecord


class Runs(MemoryState):
    """The runs part of :class:`~corral.stores.memory.MemoryStore`."""

    def create_run(self, record: RunRecord) -> None:
        with self._lock:
            self._check()
            self._runs[record.id] = replace(
                record,
                owner=record.owner or RunOwner.current(),
                heartbeat_at=record.heartbeat_at or time.time(),
            )
            self._events.setdefault(record.id, [])

    def update_run(self, run_id: str, **changes: Any) -> None:
        with self._lock:
            self._check()
            changes.setdefault("heartbeat_at", time.time())
            if changes.get("status") == "running":
                changes.setdefault("owner", RunOwner.current())
            self._runs[run_id] = replace(self._runs[run_id], **changes)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            self._check()
            return self._runs.get(run_id)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        with self._lock:
            self._check()
            runs = [r for r in self._runs.values() if tenant is None or r.tenant == tenant]
            return sorted(runs, key=lambda r: r.started_at, reverse=True)[:limit]

    def heartbeat(self, run_id: str) -> None:
        with self._lock:
            self._check()
            run = self._runs.get(run_id)
            if run is not None:
                self._runs[run_id] = replace(run, heartbeat_at=time.time())

    def take_run(self, run_id: str, *, was: str | None, now: str) -> bool:
        with self._lock:
            self._check()
            run = self._runs.get(run_id)
            if run is None or run.served_by != was or run.status not in ("running", "interrupted"):
                return False
            self._runs[run_id] = replace(
                run,
                served_by=now,
                status="running",
                ended_at=None,
                owner=RunOwner.current(),
                heartbeat_at=time.time(),
            )
            return True

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed."""
        now = time.time() if now is None else now
        marked = []
        with self._lock:
            self._check()
            for run in list(self._runs.values()):
                if run.status != "running":
                    continue
                why = interruption(run.owner, heartbeat_at=run.heartbeat_at, now=now, lease=lease)
                if why is None:
                    continue
                self._runs[run.id] = replace(
                    run, status="interrupted", ended_at=run.heartbeat_at or now
                )
                events = self._events.setdefault(run.id, [])
                seq = max((e.seq for e in events), default=0) + 1
                event = Event(
                    run_id=run.id,
                    seq=seq,
                    kind="interrupted",
                    at=now,
                    data={"why": why},
                    tenant=run.tenant,
                    actor=run.agent,
                )
                self._append([event])
                marked.append(run.id)
        return marked
