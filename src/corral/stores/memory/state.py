"""The in-memory store's tables: dictionaries under one lock, in this process only.

:class:`MemoryState` holds every table and the one lock; the store's concerns
(:mod:`.runs`, :mod:`.events`, ...) are mixins over it. Events take their place in
the audit chain when appended (:meth:`MemoryState._append`) and are sealed when the
chain is next read (:meth:`MemoryState._seal`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

from corral.stores.chain import Sealer
from corral.stores.grants import GrantLeases
from corral.stores.records import (
    ApprovalRecord,
    AuditHead,
    AuditRecord,
    BreakerState,
    DefinitionChange,
    DegradeCounts,
    Event,
    KeyRecord,
    KillSwitchState,
    RecordedRun,
    RunRecord,
)
from corral.stores.scopes import ScopedCharge, ScopeState


class Grant:
    """A reservation as the store holds it: its charges, holder and lease."""

    __slots__ = ("charges", "ends", "holder", "lease_until", "reclaimed")

    def __init__(
        self, charges: list[ScopedCharge], lease_until: float, holder: str, ends: float
    ) -> None:
        self.charges = charges
        self.lease_until = lease_until
        self.holder = holder
        self.ends = ends
        self.reclaimed = False


class MemoryState:
    """Every table of the in-memory store, under one lock."""

    leases: GrantLeases  # the store's (see MemoryStore): released when it closes

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[Event]] = {}
        self._audit: list[AuditRecord] = []
        self._unsealed: list[Event] = []
        self._sealer = Sealer.from_env()
        self._scopes: dict[str, ScopeState] = {}
        self._grants: dict[str, Grant] = {}
        self._grant_ids = itertools.count(1)
        self._kill: dict[tuple[str, str], KillSwitchState] = {}
        self._approvals: dict[str, ApprovalRecord] = {}
        self._claims: dict[tuple[str | None, str], dict[str, Any]] = {}
        self._breakers: dict[str, BreakerState] = {}
        self._degrade: dict[str, dict[float, DegradeCounts]] = {}  # name -> bucket start -> counts
        self._keys: dict[str, KeyRecord] = {}
        self._recordings: dict[str, RecordedRun] = {}
        self._policies: dict[str, dict[str, Any]] = {}
        self._definitions: dict[tuple[str, str], DefinitionChange] = {}
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            from corral.exceptions import StoreError

            raise StoreError("memory store set to fail")

    def _append(self, events: Sequence[Event]) -> None:
        self._unsealed.extend(events)
        for e in events:
            self._events.setdefault(e.run_id, []).append(e)

    def _seal(self) -> None:
        if self._unsealed:
            last = self._audit[-1] if self._audit else None
            head = AuditHead() if last is None else AuditHead(seq=last.seq, hash=last.hash)
            self._audit.extend(self._sealer.seal(head, self._unsealed))
            self._unsealed = []

    def close(self) -> None:
        self.leases.close()
        return None
