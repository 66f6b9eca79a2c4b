"""Runs' recordings and the policy documents they ran under, in PostgreSQL (the
recordings concern). A recording and its policy document are written in one
transaction; pruning drops bodies (the digests stay). Its statements live here, beside
the only code that runs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.records import RecordedRun, policy_text, recorded_run, recording_row

SAVE_RECORDING = (
    "INSERT INTO corral_recordings "
    "(run_id, digest, policy_digest, saved_at, bytes, body, pruned_at) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
    "digest = excluded.digest, policy_digest = excluded.policy_digest, "
    "saved_at = excluded.saved_at, bytes = excluded.bytes, body = excluded.body, "
    "pruned_at = excluded.pruned_at"
)
SAVE_POLICY = (
    "INSERT INTO corral_policies (digest, document, saved_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (digest) DO NOTHING"
)
GET_RECORDING = (
    "SELECT run_id, digest, policy_digest, saved_at, bytes, body, pruned_at "
    "FROM corral_recordings WHERE run_id = %s"
)
GET_POLICY = "SELECT document FROM corral_policies WHERE digest = %s"
PRUNE = (
    "UPDATE corral_recordings r SET body = NULL, pruned_at = %s FROM corral_runs u "
    "WHERE u.id = r.run_id AND r.body IS NOT NULL AND u.ended_at IS NOT NULL "
    "AND u.ended_at < %s RETURNING r.run_id, u.ended_at"
)
DUE_FOR_PRUNING = (
    "SELECT r.run_id, u.ended_at FROM corral_recordings r JOIN corral_runs u "
    "ON u.id = r.run_id WHERE r.body IS NOT NULL AND u.ended_at IS NOT NULL "
    "AND u.ended_at < %s"
)


class Recordings(PostgresConnection):
    """The recordings part of :class:`~corral.stores.postgres.PostgresStore`."""

    def save_recording(
        self, record: RecordedRun, *, policy: Mapping[str, Any] | None = None
    ) -> None:
        row = recording_row(record)

        def op(conn: Conn) -> None:
            with conn.transaction():
                conn.execute(SAVE_RECORDING, row)
                if policy is not None:
                    document = policy_text(record.policy_digest, policy)
                    conn.execute(SAVE_POLICY, (record.policy_digest, document, record.saved_at))

        self._call(op)

    def get_recording(self, run_id: str) -> RecordedRun | None:
        row = self._call(lambda conn: conn.execute(GET_RECORDING, (run_id,)).fetchone())
        return None if row is None else recorded_run(row)

    def policy_document(self, digest: str) -> Mapping[str, Any] | None:
        row = self._call(lambda conn: conn.execute(GET_POLICY, (digest,)).fetchone())
        if row is None:
            return None
        document: dict[str, Any] = json.loads(row[0])
        return document

    def prune_recordings(
        self, *, ended_before: float, now: float, dry_run: bool = False
    ) -> list[str]:
        statement, params = (
            (DUE_FOR_PRUNING, (ended_before,)) if dry_run else (PRUNE, (now, ended_before))
        )
        rows = self._call(lambda conn: conn.execute(statement, params).fetchall())
        return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]))]
