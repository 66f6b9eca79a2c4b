"""A run's events in memory, and the audit log they make (the events concern).

An event takes its place in the chain when appended; the chain's hashes are computed
when it is next read: in one process's memory a hash protects nothing until someone
looks, and appending stays cheap.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from corral.stores.memory.state import MemoryState
from corral.stores.records import AuditHead, AuditRecord, Event


class Events(MemoryState):
    """The events and audit-log part of :class:`~corral.stores.memory.MemoryStore`."""

    def append_events(self, events: Sequence[Event]) -> None:
        with self._lock:
            self._check()
            self._append(events)

    def events(self, run_id: str) -> list[Event]:
        with self._lock:
            self._check()
            return list(self._events.get(run_id, []))

    def audit_head(self) -> AuditHead:
        with self._lock:
            self._check()
            self._seal()
            if not self._audit:
                return AuditHead()
            last = self._audit[-1]
            return AuditHead(seq=last.seq, hash=last.hash)

    def audit_records(self, *, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records with ``seq`` above ``after``, oldest first, at most ``limit``."""
        with self._lock:
            self._check()
            self._seal()
            start = bisect.bisect_right(self._audit, after, key=lambda r: r.seq)
            return self._audit[start : start + limit]
