"""Idempotency claims in the SQLite file (the idempotency concern).

A claim is taken when free (an insert that does nothing when the key is held) and
otherwise read, in one ``BEGIN IMMEDIATE`` transaction, so one claimant wins across
processes; an ``unknown`` claim is settled by a conditional
statement, so one resolver wins.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, cast

from corral.stores.records import Claim, ClaimRecord, ClaimState
from corral.stores.rules import claim_filter, tenant_key
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.rows import claim_record, dumps
from corral.stores.sqlite.sql import (
    CLAIM_HELD,
    CLAIM_OF_TENANT,
    CLAIM_STATUS,
    COMPLETE_CLAIM,
    INSERT_CLAIM,
    LOOKUP_CLAIM,
    RELEASE_CLAIM,
    RENEW_CLAIM,
    RESOLVE_DONE,
    RESOLVE_FREED,
    RESOLVE_TAKEN,
    list_claims,
)


class Claims(SQLiteConnection):
    """The idempotency part of :class:`~corral.stores.sqlite.SQLiteStore`."""

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
        where = (tenant_key(tenant), key)
        with self._write():
            cur = cast(sqlite3.Cursor, self._cur)
            # The usual case, a free key, in one statement; a held one is read after.
            cur.execute(INSERT_CLAIM, (*where, digest, now + lease, time.time(), tool))
            if cur.rowcount == 1:
                return Claim(status="claimed")
            row = cur.execute(CLAIM_HELD, where).fetchone()
        if row[0] != digest:
            return Claim(status="mismatch")
        if row[1] is not None:
            return Claim(status="done", outcome=json.loads(row[1]))
        if now >= row[2]:
            return Claim(status="unknown")
        return Claim(status="in_flight")

    def complete(self, key: str, outcome: Mapping[str, Any], *, tenant: str | None) -> None:
        with self._write():
            cast(sqlite3.Cursor, self._cur).execute(
                COMPLETE_CLAIM, (dumps(outcome), tenant_key(tenant), key)
            )

    def release(self, key: str, *, tenant: str | None) -> None:
        with self._write() as conn:
            conn.execute(RELEASE_CLAIM, (tenant_key(tenant), key))

    def renew_claim(self, key: str, *, tenant: str | None, now: float, lease: float) -> bool:
        with self._write() as conn:
            changed = conn.execute(RENEW_CLAIM, (now + lease, tenant_key(tenant), key)).rowcount
        return bool(changed)

    def lookup_claim(self, key: str, *, tenant: str | None, now: float) -> ClaimRecord | None:
        with self._locked() as conn:
            row = conn.execute(LOOKUP_CLAIM, (tenant_key(tenant), key)).fetchone()
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
        with self._locked() as conn:
            rows = conn.execute(list_claims(where), (*params, limit)).fetchall()
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
        where = (tenant_key(tenant), key, now)
        with self._write() as conn:
            if outcome is not None:
                cur = conn.execute(RESOLVE_DONE, (dumps(outcome), *where))
            elif lease is not None:
                cur = conn.execute(RESOLVE_TAKEN, (now + lease, *where))
            else:
                cur = conn.execute(RESOLVE_FREED, where)
            return bool(cur.rowcount)
