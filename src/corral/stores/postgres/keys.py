"""API keys in PostgreSQL (the keys concern).

Adding or revoking a key is one statement; with an audit record, the change and the
record are written in one transaction that holds the audit chain's head. Each is sent
once (a connection lost mid-way is an error, not a retry: a retried add would find its
own row and report the id taken). The table holds the SHA-256 digest of each secret,
never the secret. Its statements live here, beside the only code that runs them.
"""

from __future__ import annotations

import time
from typing import Any

from corral.stores.postgres.audit import append_locked
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.sql import LOCK_HEAD
from corral.stores.records import KEY_COLUMNS, Event, KeyRecord, key_of_row, key_row

ADD_KEY = (
    f"INSERT INTO corral_api_keys ({KEY_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id"
)
GET_KEY = f"SELECT {KEY_COLUMNS} FROM corral_api_keys WHERE id = %s"
LIST_KEYS = f"SELECT {KEY_COLUMNS} FROM corral_api_keys ORDER BY created, id"
LIST_TENANT_KEYS = (
    f"SELECT {KEY_COLUMNS} FROM corral_api_keys WHERE tenant = %s ORDER BY created, id"
)
REVOKE_KEY = (
    "UPDATE corral_api_keys SET revoked = %s WHERE id = %s AND revoked IS NULL RETURNING id"
)


class Keys(PostgresConnection):
    """The API-key part of :class:`~corral.stores.postgres.PostgresStore`."""

    def add_key(self, record: KeyRecord, *, audit: Event | None = None) -> bool:
        return self._changed(ADD_KEY, key_row(record), audit)

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._call(lambda conn: conn.execute(GET_KEY, (key_id,)).fetchone())
        return None if row is None else key_of_row(row)

    def list_keys(self, *, tenant: str | None = None) -> list[KeyRecord]:
        if tenant is None:
            rows = self._call(lambda conn: conn.execute(LIST_KEYS).fetchall())
        else:
            rows = self._call(lambda conn: conn.execute(LIST_TENANT_KEYS, (tenant,)).fetchall())
        return [key_of_row(r) for r in rows]

    def revoke_key(self, key_id: str, *, at: float, audit: Event | None = None) -> bool:
        return self._changed(REVOKE_KEY, (at, key_id), audit)

    def _changed(self, statement: str, params: tuple[Any, ...], audit: Event | None) -> bool:
        """Run ``statement`` (one returning a row when it changed one) and, if it changed
        one, append ``audit`` in the same transaction; whether it changed one."""

        def op(conn: Conn) -> bool:
            with conn.transaction():  # the change and its audit record, or neither
                if conn.execute(statement, params).fetchone() is None:
                    return False
                if audit is not None:
                    head = conn.execute(LOCK_HEAD).fetchone()
                    self._head = append_locked(conn, self._sealer, [audit], time.time(), head)
                return True

        return self._call(op, once=True)
