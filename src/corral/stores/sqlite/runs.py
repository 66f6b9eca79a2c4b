"""Runs in the SQLite file: their records, owners and heartbeats (the runs concern).

Marking a run ``interrupted`` and appending its ``interrupted`` event happen in one
``BEGIN IMMEDIATE`` transaction, and only if nothing renewed the run since it was
judged.
"""

from __future__ import annotations

import time
from typing import Any

from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption
from corral.stores.records import Event, RunRecord
from corral.stores.sqlite.audit import append
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import (
    PLAIN_FIELDS,
    RUN_FIELDS,
    dumps,
    dumps_or_none,
    owner_columns,
    run_owner,
    run_record,
)
from corral.stores.sqlite.sql import (
    GET_RUN,
    HEARTBEAT,
    INSERT_RUN,
    LIST_RUNS,
    LIST_TENANT_RUNS,
    MARK_INTERRUPTED,
    NEXT_EVENT_SEQ,
    RUNNING_RUNS,
    TAKE_RUN,
    update_run,
)


class Runs(SQLiteConnection):
    """The runs part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def create_run(self, record: RunRecord) -> None:
        owner = record.owner or RunOwner.current()
        heartbeat = record.heartbeat_at or time.time()
        with self._write() as conn:
            conn.execute(
                INSERT_RUN,
                (
                    record.id,
                    record.tenant,
                    record.agent,
                    record.status,
                    record.stop_reason,
                    dumps_or_none(record.stop),
                    record.task,
                    record.answer,
                    dumps(record.usage),
                    record.policy_digest,
                    record.started_at,
                    record.ended_at,
                    dumps(list(record.would_stop)),
                    *owner_columns(owner),
                    heartbeat,
                    record.kill_mode,
                    record.served_by,
                ),
            )

    def update_run(self, run_id: str, **changes: Any) -> None:
        unknown = set(changes) - RUN_FIELDS
        if unknown or "id" in changes:
            raise TypeError(f"update_run cannot set {', '.join(sorted(unknown or {'id'}))}")
        changes.setdefault("heartbeat_at", time.time())
        if changes.get("status") == "running":
            changes.setdefault("owner", RunOwner.current())
        columns: list[str] = []
        values: list[Any] = []
        for name, value in changes.items():
            if name in PLAIN_FIELDS:
                columns.append(name)
                values.append(value)
            elif name == "owner":
                columns += ["owner_host", "owner_pid", "owner_node", "owner_started"]
                values += owner_columns(value)
            elif name == "stop":
                columns.append(name)
                values.append(dumps_or_none(value))
            else:  # usage, would_stop
                columns.append(name)
                values.append(dumps(list(value) if name == "would_stop" else value))
        with self._write() as conn:
            cur = conn.execute(update_run(columns), (*values, run_id))
            if cur.rowcount == 0:
                raise KeyError(run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._locked() as conn:
            row = conn.execute(GET_RUN, (run_id,)).fetchone()
        return None if row is None else run_record(row)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        query, params = (LIST_TENANT_RUNS, (tenant,)) if tenant is not None else (LIST_RUNS, ())
        with self._locked() as conn:
            rows = conn.execute(query, (*params, limit)).fetchall()
        return [run_record(row) for row in rows]

    def heartbeat(self, run_id: str) -> None:
        self._check_file()
        with self._write() as conn:
            conn.execute(HEARTBEAT, (time.time(), run_id))

    def take_run(self, run_id: str, *, was: str | None, now: str) -> bool:
        self._check_file()
        owner = owner_columns(RunOwner.current())
        with self._write() as conn:
            cursor = conn.execute(TAKE_RUN, (now, time.time(), *owner, run_id, was))
            return cursor.rowcount == 1

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed;
        return their ids. Each gets an ``interrupted`` event saying why."""
        now = time.time() if now is None else now
        if self._held:  # their heartbeats first, as if they had been written when given
            self.flush()
        with self._locked() as conn:
            rows = conn.execute(RUNNING_RUNS).fetchall()
        found = []
        for run_id, host, pid, node, started, heartbeat, tenant, agent in rows:
            owner = run_owner(host, pid, node, started)
            why = interruption(owner, heartbeat_at=heartbeat, now=now, lease=lease)
            if why is not None:
                found.append((run_id, heartbeat, why, tenant, agent))
        if not found:
            return []
        marked = []
        with self._write() as conn:
            for run_id, heartbeat, why, tenant, agent in found:
                # Only if nothing renewed it since it was judged (its owner may be alive elsewhere).
                cur = conn.execute(MARK_INTERRUPTED, (heartbeat or now, run_id, heartbeat))
                if cur.rowcount == 0:
                    continue
                (seq,) = conn.execute(NEXT_EVENT_SEQ, (run_id,)).fetchone()
                event = Event(
                    run_id=run_id,
                    seq=seq,
                    kind="interrupted",
                    at=now,
                    data={"why": why},
                    tenant=tenant,
                    actor=agent,
                )
                append(conn, self._sealer, [event])
                marked.append(run_id)
        return marked
