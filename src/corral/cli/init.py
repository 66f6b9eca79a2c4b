"""``corral init [--db URL] [--json]``: create the store, bring its schema up to date, say
where it is.

The other operator commands never create a store (``no corral store at ...``); agents'
runs and ``corral demo`` create the one they use. ``init`` creates one on purpose, for
an operator who wants the store before any agent runs: the per-user default (or
``CORRAL_DB``, or ``--db``), with its missing directories for a SQLite file. Running it
again changes nothing but applying migrations a newer corral brings. It refuses a
SQLite file that holds another application's database.

Exit codes: 0 created or already there; 1 the store cannot be created or reached; 2 an
invalid store URL.

``--json`` prints ``{"store": str, "created": bool, "schema_version": int | null}``
(``null`` for an in-memory store, which has no schema).

Imports the stores and the shared ``_common``; no other command module.
"""

from __future__ import annotations

import json
import os
import sqlite3
from urllib.parse import unquote

import typer

from corral.cli._common import EXIT_FAILED, EXIT_OK, DbOption, Fail, JsonOption, guarded, open_db
from corral.cli._format import echo
from corral.exceptions import ConfigError, StoreError, StoreMissing
from corral.stores import SQLiteStore, Store, default_url, open_store


def init(db: DbOption = None, json_out: JsonOption = False) -> None:
    """Create the store (or bring it up to date) and say where it is; safe to run again."""
    raise typer.Exit(guarded("init", lambda: init_command(db, as_json=json_out)))


def init_command(db: str | None, *, as_json: bool = False) -> int:
    """Create the store ``db`` names (default: ``CORRAL_DB``, then the per-user store)."""
    url = db if db is not None else default_url()
    created = not _exists(url)
    if created:
        _refuse_foreign(url)
        _make_folder(url)
    store, shown = open_db(db, announce=not as_json, create=True)
    version = _schema_version(store)
    if as_json:
        body = {"store": shown, "created": created, "schema_version": version}
        echo(json.dumps(body, indent=2))
        return EXIT_OK
    if _in_memory(url):
        echo("created a corral store in memory: it ends with this command")
        return EXIT_OK
    schema = f" (schema version {version})" if version is not None else ""
    if created:
        echo(f"created a corral store{schema}")
    else:
        echo(f"a corral store is already there{schema}: nothing to create")
    return EXIT_OK


def _exists(url: str) -> bool:
    """Whether a store is there already (an in-memory one never is)."""
    if _in_memory(url):
        return False
    try:
        open_store(url, create=False)
    except StoreMissing:
        return False
    except (ConfigError, StoreError):
        return True  # open_db below reports it, with its exit code
    return True


def _in_memory(url: str) -> bool:
    scheme, _, rest = url.partition("://")
    where = rest.partition("?")[0]
    return scheme.lower() == "memory" or (scheme.lower() == "sqlite" and where in ("", "/:memory:"))


def _sqlite_file(url: str) -> str | None:
    """The file a ``sqlite:`` URL names (``None`` for another kind of store, or in memory)."""
    scheme, _, rest = url.partition("://")
    where = rest.partition("?")[0]
    if scheme.lower() != "sqlite" or _in_memory(url) or not where.startswith("/"):
        return None
    return os.path.abspath(unquote(where[1:])) if len(where) > 1 else None


def _refuse_foreign(url: str) -> None:
    path = _sqlite_file(url)
    if path is None or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    raise Fail(
        EXIT_FAILED,
        f"{path} is a SQLite database without corral's tables (another application's?): "
        "corral init will not add tables to it; name a new file with --db",
    )


def _make_folder(url: str) -> None:
    path = _sqlite_file(url)
    if path is None:
        return
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise Fail(EXIT_FAILED, f"cannot create {folder}: {exc.strerror or exc}") from None


def _schema_version(store: Store) -> int | None:
    reader = getattr(store, "schema_version", None)
    if callable(reader):
        version = reader()
        return version if isinstance(version, int) else None
    if isinstance(store, SQLiteStore) and store.path != ":memory:":
        conn = sqlite3.connect(store.path, timeout=5)
        try:
            row = conn.execute("SELECT max(version) FROM corral_schema_migrations").fetchone()
        finally:
            conn.close()
        return int(row[0]) if row and row[0] is not None else None
    return None
