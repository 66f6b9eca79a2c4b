"""Idempotency claims in PostgreSQL (the idempotency concern).

A claim is exclusive through the primary key (``INSERT ... ON CONFLICT DO NOTHING``):
exactly one claimant wins; an ``unknown`` claim is settled by one conditional
statement, so one resolver wins.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from corral.exceptions import StoreError
from corral.stores.postgres.connection import ATTEMPTS, Conn, PostgresConnection
from corral.stores.postgres.rows import claim_record, jsonb
from corral.stores.postgres.sql import (
    CLAIM,
    CLAIM_OF_TENANT,
    CLAIM_STATUS,
    COMPLETE_CLAIM,
    LOOKUP_CLAIM,
    RELEASE_CLAIM,
    RENEW_CLAIM,
    RESOLVE_DONE,
    RESOLVE_FREED,
    RESOLVE_TAKEN,
    list_claims,
)
from corral.stores.records import Claim, ClaimRecord, ClaimState
from corral.stores.rules import claim_filter, tenant_key


class Claims(PostgresConnection):
    """The idempotency part of :class:`~corral.stores.postgres.PostgresStore`."""

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
        """Claim ``key`` for ``tenant``; the primary key lets exactly one claimant win."""
        tk = tenant_key(tenant)
        params = (tk, key, digest, now + lease, time.time(), tool, tk, key)

        def op(conn: Conn) -> Claim:
            for _ in range(ATTEMPTS):
                row = conn.execute(CLAIM, params).fetchone()
                if row is None:
                    continue  # released or committed after this statement began: look again
                won, held, outcome, lease_until = row
                if won:
                    return Claim(status="claimed")
                if held != digest:
                    return Claim(status="mismatch")
                if outcome is not None:
                    return Claim(status="done", outcome=outcome)
                return Claim(status="unknown" if now >= lease_until else "in_flight")
            raise StoreError(f"idempotency key {key!r} kept changing hands; try again")

        return self._call(op, once=True)

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        self._call(
            lambda conn: conn.execute(
                COMPLETE_CLAIM, (jsonb(dict(outcome)), tenant_key(tenant), key)
            )
        )

    def release(self, key: str, *, tenant: str | None) -> None:
        self._call(lambda conn: conn.execute(RELEASE_CLAIM, (tenant_key(tenant), key)))

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        params = (now + lease, tenant_key(tenant), key)
        return bool(self._call(lambda conn: conn.execute(RENEW_CLAIM, params).rowcount))

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        params = (tenant_key(tenant), key)
        row = self._call(lambda conn: conn.execute(LOOKUP_CLAIM, params).fetchone())
        return None if row is None else claim_record(row, now)

    def list_claims(
        self,
        *,
        now: float,
        status: ClaimState | None = None,
        tenant: str | None = None,
        limit: int = 1000,
    ) -> list[ClaimRecord]:
        where, params = claim_filter(
            CLAIM_OF_TENANT, CLAIM_STATUS, tenant=tenant, status=status, now=now
        )
        query = list_claims(where)
        params.append(limit)
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [claim_record(row, now) for row in rows]

    def resolve_claim(
        self,
        key: str,
        *,
        tenant: str | None,
        now: float,
        outcome: Mapping[str, Any] | None,
        lease: float | None = None,
    ) -> bool:
        """Settle an unknown claim; one conditional statement, so one caller wins."""
        where = (tenant_key(tenant), key, now)
        if outcome is not None:
            query = RESOLVE_DONE
            params: tuple[Any, ...] = (jsonb(dict(outcome)), *where)
        elif lease is not None:
            query = RESOLVE_TAKEN
            params = (now + lease, *where)
        else:
            query = RESOLVE_FREED
            params = where
        return bool(self._call(lambda conn: conn.execute(query, params).rowcount, once=True))
