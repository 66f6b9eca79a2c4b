"""Runs' recordings and the policy documents they ran under, in memory (the recordings
concern)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from corral.stores.memory.state import MemoryState
from corral.stores.records import RecordedRun


class Recordings(MemoryState):
    """The recordings part of :class:`~corral.stores.memory.MemoryStore`."""

    def save_recording(
        self, record: RecordedRun, *, policy: Mapping[str, Any] | None = None
    ) -> None:
        with self._lock:
            self._check()
            # read back as copies; its JSON text is not kept (the body is)
            self._recordings[record.run_id] = replace(record, text=None) if record.text else record
            if policy is not None and record.policy_digest not in self._policies:
                self._policies[record.policy_digest] = copy.deepcopy(dict(policy))

    def get_recording(self, run_id: str) -> RecordedRun | None:
        with self._lock:
            self._check()
            found = self._recordings.get(run_id)
            return None if found is None else replace(found, body=copy.deepcopy(found.body))

    def policy_document(self, digest: str) -> Mapping[str, Any] | None:
        with self._lock:
            self._check()
            found = self._policies.get(digest)
            return None if found is None else copy.deepcopy(found)

    def prune_recordings(
        self, *, ended_before: float, now: float, dry_run: bool = False
    ) -> list[str]:
        with self._lock:
            self._check()
            due = []
            for run_id, rec in self._recordings.items():
                run = self._runs.get(run_id)
                ended = None if run is None else run.ended_at
                if rec.body is not None and ended is not None and ended < ended_before:
                    due.append((ended, run_id))
            due.sort()
            if not dry_run:
                for _, run_id in due:
                    rec = self._recordings[run_id]
                    self._recordings[run_id] = replace(rec, body=None, pruned_at=now)
            return [run_id for _, run_id in due]
