"""Runs in PostgreSQL: their records, owners and heartbeats (the runs concern).

Runs are single-statement writes; marking runs ``interrupted`` is a conditional
update (still running with the heartbeat that was judged), in the transaction that
holds the audit chain's head and appends their ``interrupted`` events.
"""

from __future__ import annotations

import time
from dataclasses import fields
from typing import Any

from corral.stores.owner import RUN_LEASE_SECONDS, RunOwner, interruption
from corral.stores.postgres.audit import append_locked
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.rows import RUN_FIELDS, run_columns, run_owner, run_record
from corral.stores.postgres.sql import (
    GET_RUN,
    HEARTBEAT,
    LIST_RUNS,
    LIST_TENANT_RUNS,
    LOCK_HEAD,
    MARK_INTERRUPTED,
    RUNNING_RUNS,
    TAKE_RUN,
    update_run,
    upsert,
)
from corral.stores.records import Event, RunRecord


class Runs(PostgresConnection):
    """The runs part of :class:`~corral.stores.postgres.PostgresStore`."""

    def create_run(self, record: RunRecord) -> None:
        """Record a run (replacing one with the same id), owned by this process unless named."""
        values = {f.name: getattr(record, f.name) for f in fields(RunRecord)}
        values["owner"] = record.owner or RunOwner.current()
        values["heartbeat_at"] = record.heartbeat_at or time.time()
        columns = run_columns(values)
        query = upsert("corral_runs", list(columns))
        self._call(lambda conn: conn.execute(query, list(columns.values())))

    def update_run(self, run_id: str, **changes: Any) -> None:
        """Change the named fields; renews the heartbeat, and a run set running again is ours."""
        unknown = sorted(set(changes) - RUN_FIELDS)
        if unknown:
            raise TypeError(f"update_run cannot set {', '.join(unknown)}")
        changes.setdefault("heartbeat_at", time.time())
        if changes.get("status") == "running":
            changes.setdefault("owner", RunOwner.current())
        columns = run_columns(changes)
        query = update_run(columns)
        params = [*columns.values(), run_id]
        if self._call(lambda conn: conn.execute(query, params).fetchone()) is None:
            raise KeyError(run_id)

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._call(lambda conn: conn.execute(GET_RUN, (run_id,)).fetchone())
        return None if row is None else run_record(row)

    def list_runs(self, *, limit: int = 100, tenant: str | None = None) -> list[RunRecord]:
        query = LIST_RUNS if tenant is None else LIST_TENANT_RUNS
        params = (limit,) if tenant is None else (tenant, limit)
        return [
            run_record(r) for r in self._call(lambda conn: conn.execute(query, params).fetchall())
        ]

    def heartbeat(self, run_id: str) -> None:
        """Renew a run's heartbeat (during a long wait that writes nothing else)."""
        self._call(lambda conn: conn.execute(HEARTBEAT, (time.time(), run_id)))

    def take_run(self, run_id: str, *, was: str | None, now: str) -> bool:
        me = RunOwner.current()
        params = (now, time.time(), me.host, me.pid, me.node, me.started, run_id, was)
        return self._call(lambda conn: conn.execute(TAKE_RUN, params).fetchone()) is not None

    def mark_interrupted(
        self, *, now: float | None = None, lease: float = RUN_LEASE_SECONDS
    ) -> list[str]:
        """Mark ``interrupted`` the running runs whose owner died or whose lease lapsed.

        Returns their ids; each gets an ``interrupted`` event saying why. A run is
        marked only if nothing renewed it since it was judged, and by one caller only.
        """
        now = time.time() if now is None else now
        sealer = self._sealer
        found = []
        for run_id, host, pid, node, started, beat in self._call(
            lambda conn: conn.execute(RUNNING_RUNS).fetchall()
        ):
            why = interruption(
                run_owner(host, pid, node, started), heartbeat_at=beat, now=now, lease=lease
            )
            if why is not None:
                found.append((run_id, beat, why))
        if not found:
            return []
        ids, beats, whys = (list(col) for col in zip(*found, strict=True))

        def op(conn: Conn) -> set[str]:
            with conn.transaction():
                head = conn.execute(LOCK_HEAD).fetchone()  # first: the one lock order
                rows = conn.execute(MARK_INTERRUPTED, (ids, beats, whys, now)).fetchall()
                events = [
                    Event(
                        run_id=run_id,
                        seq=seq,
                        kind="interrupted",
                        at=now,
                        data={"why": why},
                        tenant=tenant,
                        actor=agent,
                    )
                    for run_id, why, tenant, agent, seq in rows
                ]
                if events:
                    self._head = append_locked(conn, sealer, events, now, head)
            return {r[0] for r in rows}

        marked = self._call(op, once=True)
        return [i for i in ids if i in marked]
