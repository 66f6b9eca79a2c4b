"""API keys in the SQLite file (the keys concern).

Adding or revoking a key and its audit record are written in one ``BEGIN IMMEDIATE``
transaction; the primary key makes two processes adding the same id agree on one.
The table holds the SHA-256 digest of each secret, never the secret. Its statements
live here, beside the only code that runs them.
"""

from __future__ import annotations

from corral.stores.records import KEY_COLUMNS, Event, KeyRecord, key_of_row, key_row
from corral.stores.sqlite.audit import append
from corral.stores.sqlite.connection import SQLiteConnection

ADD_KEY = (
    f"INSERT INTO corral_api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO NOTHING"
)
GET_KEY = f"SELECT {KEY_COLUMNS} FROM corral_api_keys WHERE id = ?"
LIST_KEYS = f"SELECT {KEY_COLUMNS} FROM corral_api_keys ORDER BY created, id"
LIST_TENANT_KEYS = (
    f"SELECT {KEY_COLUMNS} FROM corral_api_keys WHERE tenant = ? ORDER BY created, id"
)
REVOKE_KEY = "UPDATE corral_api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL"


class Keys(SQLiteConnection):
    """The API-key part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def add_key(self, record: KeyRecord, *, audit: Event | None = None) -> bool:
        with self._write() as conn:
            added = conn.execute(ADD_KEY, key_row(record)).rowcount > 0
            if added and audit is not None:
                append(conn, self._sealer, [audit])
            return added

    def get_key(self, key_id: str) -> KeyRecord | None:
        with self._locked() as conn:
            row = conn.execute(GET_KEY, (key_id,)).fetchone()
        return None if row is None else key_of_row(row)

    def list_keys(self, *, tenant: str | None = None) -> list[KeyRecord]:
        with self._locked() as conn:
            if tenant is None:
                rows = conn.execute(LIST_KEYS).fetchall()
            else:
                rows = conn.execute(LIST_TENANT_KEYS, (tenant,)).fetchall()
        return [key_of_row(r) for r in rows]

    def revoke_key(self, key_id: str, *, at: float, audit: Event | None = None) -> bool:
        with self._write() as conn:
            revoked = conn.execute(REVOKE_KEY, (at, key_id)).rowcount > 0
            if revoked and audit is not None:
                append(conn, self._sealer, [audit])
            return revoked
