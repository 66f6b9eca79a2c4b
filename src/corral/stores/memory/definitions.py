"""The queue of tool-definition changes in memory (the definitions concern)."""

from __future__ import annotations

from dataclasses import replace

from corral.stores.memory.state import MemoryState
from corral.stores.records import DefinitionChange, DefinitionStatus, Event


class Definitions(MemoryState):
    """The definitions part of :class:`~corral.stores.memory.MemoryStore`."""

    def queue_definition_change(
        self, change: DefinitionChange, *, audit: Event | None = None
    ) -> bool:
        with self._lock:
            self._check()
            key = (change.name, change.digest)
            if key in self._definitions:
                return False
            self._definitions[key] = change
            if audit is not None:
                self._append([audit])
            return True

    def definition_changes(
        self, *, status: DefinitionStatus | None = "pending", name: str | None = None
    ) -> list[DefinitionChange]:
        with self._lock:
            self._check()
            found = [
                c
                for c in self._definitions.values()
                if (status is None or c.status == status) and (name is None or c.name == name)
            ]
        return sorted(found, key=lambda c: (c.first_seen, c.name, c.digest))

    def decide_definition_change(
        self,
        name: str,
        digest: str,
        *,
        status: DefinitionStatus,
        at: float,
        by: str,
        reason: str = "",
        audit: Event | None = None,
    ) -> DefinitionChange | None:
        with self._lock:
            self._check()
            found = self._definitions.get((name, digest))
            if found is None or found.status != "pending":
                return None
            decided = replace(found, status=status, decided_at=at, decided_by=by, reason=reason)
            self._definitions[(name, digest)] = decided
            if audit is not None:
                self._append([audit])
            return decided
