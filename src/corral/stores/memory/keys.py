"""API keys in memory (the keys concern): records holding digests, never secrets."""

from __future__ import annotations

from dataclasses import replace

from corral.stores.memory.state import MemoryState
from corral.stores.records import Event, KeyRecord


class Keys(MemoryState):
    """The API-key part of :class:`~corral.stores.memory.MemoryStore`."""

    def add_key(self, record: KeyRecord, *, audit: Event | None = None) -> bool:
        with self._lock:
            self._check()
            if record.id in self._keys:
                return False
            self._keys[record.id] = record
            if audit is not None:
                self._append([audit])
            return True

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            self._check()
            return self._keys.get(key_id)

    def list_keys(self, *, tenant: str | None = None) -> list[KeyRecord]:
        with self._lock:
            self._check()
            found = [k for k in self._keys.values() if tenant is None or k.tenant == tenant]
        return sorted(found, key=lambda k: (k.created, k.id))

    def revoke_key(self, key_id: str, *, at: float, audit: Event | None = None) -> bool:
        with self._lock:
            self._check()
            record = self._keys.get(key_id)
            if record is None or record.revoked is not None:
                return False
            self._keys[key_id] = replace(record, revoked=at)
            if audit is not None:
                self._append([audit])
            return True
