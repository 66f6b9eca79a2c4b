"""Idempotency claims in memory (the idempotency concern)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from corral.stores.memory.state import MemoryState
from corral.stores.records import Claim, ClaimRecord, ClaimState
from corral.stores.rules import claim_state


class Claims(MemoryState):
    """The idempotency part of :class:`~corral.stores.memory.MemoryStore`."""

    def claim(
        self,
        key: str,
        digest: str,
        *,
        tenant: str | None,
        now: float,
        lease: float,
        tool: str = "",
    ) -> Claim:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None:
                self._claims[(tenant, key)] = {
                    "digest": digest,
                    "outcome": None,
                    "lease": now + lease,
                    "tool": tool,
                    "created": time.time(),
                }
                return Claim(status="claimed")
            if rec["digest"] != digest:
                return Claim(status="mismatch")
            if rec["outcome"] is not None:
                return Claim(status="done", outcome=rec["outcome"])
            if now >= rec["lease"]:
                return Claim(status="unknown")
            return Claim(status="in_flight")

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is not None:
                rec["outcome"] = dict(outcome)

    def release(self, key: str, *, tenant: str | None) -> None:
        with self._lock:
            self._check()
            self._claims.pop((tenant, key), None)

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None or rec["outcome"] is not None:
                return False
            rec["lease"] = now + lease
            return True

    def _claim_record(
        self, tenant: str | None, key: str, rec: Mapping[str, Any], now: float
    ) -> ClaimRecord:
        return ClaimRecord(
            key=key,
            tenant=tenant,
            tool=rec["tool"],
            digest=rec["digest"],
            status=claim_state(rec["outcome"], rec["lease"], now),
            created=rec["created"],
            lease_until=rec["lease"],
            outcome=rec["outcome"],
        )

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            return None if rec is None else self._claim_record(tenant, key, rec, now)

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        with self._lock:
            self._check()
            found = [
                self._claim_record(t, k, rec, now)
                for (t, k), rec in self._claims.items()
                if tenant is None or t == tenant
            ]
        found = [c for c in found if status is None or c.status == status]
        return sorted(found, key=lambda c: c.created)[:limit]

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        with self._lock:
            self._check()
            rec = self._claims.get((tenant, key))
            if rec is None or rec["outcome"] is not None or now < rec["lease"]:
                return False
            if outcome is not None:
                rec["outcome"] = dict(outcome)
            elif lease is not None:
                rec["lease"] = now + lease
            else:
                del self._claims[(tenant, key)]
            return True
