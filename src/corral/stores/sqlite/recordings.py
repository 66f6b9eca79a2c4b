"""Runs' recordings and the policy documents they ran under, in the SQLite file (the
recordings concern). A recording and its policy document are written in one
transaction; pruning drops bodies (the digests stay). Its statements live here, beside
the only code that runs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from corral.stores.records import RecordedRun, policy_text, recorded_run, recording_row
from corral.stores.sqlite.connection import SQLiteConnection

SAVE_RECORDING = (
    "INSERT INTO corral_recordings "
    "(run_id, digest, policy_digest, saved_at, bytes, body, pruned_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
    "digest = excluded.digest, policy_digest = excluded.policy_digest, "
    "saved_at = excluded.saved_at, bytes = excluded.bytes, body = excluded.body, "
    "pruned_at = excluded.pruned_at"
)
SAVE_POLICY = (
    "INSERT INTO corral_policies (digest, document, saved_at) VALUES (?, ?, ?) "
    "ON CONFLICT (digest) DO NOTHING"
)
GET_RECORDING = (
    "SELECT run_id, digest, policy_digest, saved_at, bytes, body, pruned_at "
    "FROM corral_recordings WHERE run_id = ?"
)
GET_POLICY = "SELECT document FROM corral_policies WHERE digest = ?"
DUE_FOR_PRUNING = (
    "SELECT r.run_id FROM corral_recordings r JOIN corral_runs u ON u.id = r.run_id "
    "WHERE r.body IS NOT NULL AND u.ended_at IS NOT NULL AND u.ended_at < ? "
    "ORDER BY u.ended_at, r.run_id"
)
PRUNE = "UPDATE corral_recordings SET body = NULL, pruned_at = ? WHERE run_id = ?"


class Recordings(SQLiteConnection):
    """The recordings part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def save_recording(
        self, record: RecordedRun, *, policy: Mapping[str, Any] | None = None
    ) -> None:
        with self._write() as conn:
            conn.execute(SAVE_RECORDING, recording_row(record))
            if policy is not None:
                document = policy_text(record.policy_digest, policy)
                conn.execute(SAVE_POLICY, (record.policy_digest, document, record.saved_at))

    def get_recording(self, run_id: str) -> RecordedRun | None:
        with self._locked() as conn:
            row = conn.execute(GET_RECORDING, (run_id,)).fetchone()
        return None if row is None else recorded_run(row)

    def policy_document(self, digest: str) -> Mapping[str, Any] | None:
        with self._locked() as conn:
            row = conn.execute(GET_POLICY, (digest,)).fetchone()
        if row is None:
            return None
        document: dict[str, Any] = json.loads(row[0])
        return document

    def prune_recordings(
        self, *, ended_before: float, now: float, dry_run: bool = False
    ) -> list[str]:
        with self._write() as conn:
            due = [r[0] for r in conn.execute(DUE_FOR_PRUNING, (ended_before,)).fetchall()]
            if not dry_run:
                conn.executemany(PRUNE, [(now, run_id) for run_id in due])
        return due
