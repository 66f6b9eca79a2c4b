"""Stores: shared state behind one Protocol, chosen by URL.

=================================  ==========================================================
``sqlite:////var/lib/corral.db``   a SQLite file by absolute path; ``?synchronous=FULL``
                                   also survives power loss, at a cost per commit;
                                   ``?commit=group&window_ms=10`` commits reads' events
                                   in groups, within the window (:mod:`.sqlite`)
``sqlite:///corral.db``            a SQLite file, relative to the working directory
``sqlite://``                      SQLite in memory (also ``sqlite:///:memory:``)
``postgresql://user@host/db``      PostgreSQL, for several processes on several machines
``memory://`` / ``memory://NAME``  dictionaries in this process, for tests
=================================  ==========================================================

The default is ``CORRAL_DB`` if set, else one SQLite file per user in the platform's
user data directory (:func:`default_path`: ``~/.local/share/corral/corral.db`` on Linux,
``$XDG_DATA_HOME`` respected), so a script, a shell and ``corral kill`` of the same user
reach the same state from any directory. That directory is made when a store is first
created there. Scheme names are case-insensitive; a near miss (``sqlite:/corral.db``,
``sqlite://corral.db``, a bare path) is refused with the URL it probably meant.

Every backend answers the same :class:`~corral.stores.base.Store` Protocol, the union
of one small Protocol per concern (:mod:`.base`):

- **runs** (``RunStore``): records, owners, heartbeats, runs marked ``interrupted``;
- **events and the audit log** (``EventStore``): each run's trace, sealed into one
  hash chain (:mod:`.chain`);
- **budgets** (``BudgetStore``): scoped reservations (:mod:`.scopes`) held by leased
  grants (:mod:`.grants`, renewed by :mod:`.leases`);
- **kill switches** (``KillSwitchStore``), **approvals** (``ApprovalStore``),
  **idempotency claims** (``ClaimStore``), **breakers and degrade counters**
  (``BreakerStore``), **API keys** (``KeyStore``: digests of their secrets only).

The records they keep are in :mod:`.records`, the rules every backend applies alike in
:mod:`.rules`; the backends are :mod:`.memory`, :mod:`.sqlite` and :mod:`.postgres`
(each a package with one module per concern), with :mod:`.migrate` and
``migrations/`` for the schema, :mod:`.owner` for who runs a run, :mod:`.filewatch`
for a SQLite file removed under a process, :mod:`.unavailable` for a store that could
not be opened, :mod:`.per_store` for what a process keeps per store object.

What stores may import: the standard library, their drivers (``psycopg``,
``platformdirs``), and of corral only ``corral.exceptions``, ``corral.clock`` and
``corral._safe``. The stores are the bottom layer: they import nothing of the
policy, the gateway, the loop or the controls above them, so that any part of corral
(and any future surface) can use them.
"""

from __future__ import annotations

import atexit
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from corral.exceptions import ConfigError, StoreError, StoreMissing
from corral.stores.base import Store
from corral.stores.memory import MemoryStore

if TYPE_CHECKING:
    from corral.stores.sqlite import SQLiteStore

#: What :func:`default_path` names inside the user data directory.
DEFAULT_FILE = "corral.db"

_shared: dict[str, Store] = {}
_shared_lock = threading.Lock()

_USERINFO = re.compile(r"([^:/@]+):[^:/@]*@")
_KINDS = "use sqlite:///PATH, postgresql://... or memory://"


def default_path() -> str:
    """The per-user store file: ``corral.db`` in the platform's user data directory for
    ``corral`` (``~/.local/share/corral/corral.db`` on Linux). Nothing is created."""
    import platformdirs  # only when no store is named: keeps `import corral` light

    return os.path.join(platformdirs.user_data_dir("corral", appauthor=False), DEFAULT_FILE)


def default_url() -> str:
    """``CORRAL_DB`` if set, else :func:`default_path` as a ``sqlite:///`` URL."""
    return os.environ.get("CORRAL_DB") or sqlite_url(default_path())


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """The ``sqlite:`` URL of a file, its path made absolute (``sqlite:////abs/x.db``).

    >>> sqlite_url("/srv/corral.db")
    'sqlite:////srv/corral.db'
    """
    absolute = os.path.abspath(os.fspath(path))
    # The URL's path is percent-decoded and cut at '?': keep both characters literal.
    return "sqlite:///" + absolute.replace("%", "%25").replace("?", "%3F")


def open_store(url: str | Store | None = None, *, create: bool = True) -> Store:
    """Open a store from a URL (see the module docstring), or pass a store object through.

    One store per URL per process, shared by every run that names it: ``memory://``
    (``memory://NAME`` for a separate one) is therefore one in-process store, so a
    kill switch set through it reaches every run; a database URL opens its
    connection once. Raises :class:`~corral.exceptions.ConfigError` for a URL it
    cannot use, :class:`~corral.exceptions.StoreError` when the database cannot be
    reached. With ``create=False`` no store is created: where none exists (no SQLite
    file, an empty one or one without corral's tables; a PostgreSQL database or schema
    without them) it raises :class:`~corral.exceptions.StoreMissing` (``no corral store
    at ...``), for commands that only read or change operator state.
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("memory", "sqlite", "postgresql", "postgres"):
        raise ConfigError(_not_a_store_url(url))
    factory: Callable[[], Store]
    if scheme == "memory":
        key, factory = f"memory://{rest}", MemoryStore
    elif scheme == "sqlite":
        path, options = _sqlite_target(url, rest)
        path = path if path == ":memory:" else os.path.abspath(path)
        key = "sqlite://" + path
        if path != ":memory:":
            _prepare_sqlite(path, create, known=_open_already(key))

        def factory() -> Store:
            from corral.stores.sqlite import SQLiteStore  # on first use, like PostgreSQL's

            return SQLiteStore(path, **options)
    else:
        url = f"{scheme}://{rest}"
        _check_postgres_url(url)
        key = url
        if not create and not _open_already(key):
            _require_postgres_schema(url)

        def factory() -> Store:
            return _postgres(url, scheme)

    with _shared_lock:
        store = _shared.get(key)
        if store is None or getattr(store, "closed", False):
            store = _shared[key] = factory()
        return store


def _open_already(key: str) -> bool:
    store = _shared.get(key)
    return store is not None and not getattr(store, "closed", False)


def _prepare_sqlite(path: str, create: bool, *, known: bool) -> None:
    """Refuse a missing store when ``create`` is false (the tables are looked for unless
    this process has the store open: ``known``); make the per-user directory when a store
    is created there (a directory someone named must exist: a typo in it is an error, not
    a new folder)."""
    if os.path.exists(path):
        if not create and not known:
            _require_sqlite_schema(path)
        return
    if not create:
        raise StoreMissing(f"no corral store at {path}")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) and path == os.path.abspath(default_path()):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create {folder} for the store: {exc.strerror or exc}"
            ) from exc


def _require_sqlite_schema(path: str) -> None:
    """StoreMissing for an existing file that holds no corral store: empty (left by an older
    version's read-only command), or another application's SQLite database."""
    if os.path.isdir(path):
        return  # SQLiteStore says what is wrong with it
    try:
        conn = sqlite3.connect(path, timeout=5)
        try:
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                ("corral_schema_migrations",),
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return  # not readable as SQLite: SQLiteStore raises, naming why
    if found is None:
        what = "is empty" if os.path.getsize(path) == 0 else "has no corral tables"
        raise StoreMissing(f"no corral store at {path} (the file {what})")


def _require_postgres_schema(url: str) -> None:
    """StoreMissing when the database (or the URL's ``schema``) has no corral tables."""
    try:
        import psycopg

        from corral.stores.postgres.connection import SCHEMA_NAME, split_schema
    except ImportError:
        return  # _postgres says what is missing
    conninfo, schema = split_schema(url)
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        return  # PostgresStore refuses it, saying why
    table = f"{schema}.corral_schema_migrations" if schema else "corral_schema_migrations"
    try:
        with psycopg.connect(conninfo, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL store unavailable: {exc}") from exc
    if row is None or row[0] is None:
        where = f"schema {schema!r}" if schema else "the database"
        raise StoreMissing(f"no corral store at {display_url(url)} ({where} has no corral tables)")


def _sqlite_target(url: str, rest: str) -> tuple[str, dict[str, Any]]:
    """The file (or ``:memory:``) a SQLite URL names, and its options as SQLiteStore's
    arguments: ``synchronous``, ``commit`` (``each`` or ``group``) and ``window_ms``."""
    where, _, query = rest.partition("?")
    if where in ("", "/:memory:"):
        path = ":memory:"
    elif where.startswith("/") and len(where) > 1:
        path = unquote(where[1:])
        if "\0" in path:
            raise ConfigError(f"SQLite URL {url!r}: the path contains a NUL character")
    else:
        raise ConfigError(f"SQLite URL {url!r} has no path: {_sqlite_guess(where)}")
    options: dict[str, Any] = {"synchronous": "NORMAL"}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "synchronous":
            options["synchronous"] = value.upper()
        elif name == "commit":
            options["commit"] = value.lower()
        elif name == "window_ms":
            try:
                options["window"] = float(value) / 1000
            except ValueError:
                raise ConfigError(
                    f"SQLite URL {url!r}: window_ms must be a number of milliseconds, got {value!r}"
                ) from None
        else:
            raise ConfigError(
                f"SQLite URL {url!r}: unknown option {name!r} "
                "(known: synchronous, commit, window_ms)"
            )
    if "window" in options and options.get("commit") != "group":
        raise ConfigError(f"SQLite URL {url!r}: window_ms applies only with commit=group")
    return path, options


def _sqlite_guess(path: str) -> str:
    """``did you mean ...?`` for a SQLite file given with too few slashes."""
    bare = path.lstrip("/")
    if not bare:
        return "use sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite://"
    return (
        f"did you mean sqlite:///{bare} (relative: ./{bare}) "
        f"or sqlite:////{bare} (absolute: /{bare})?"
    )


_SCHEME_GUESSES = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "file": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "postgresql+psycopg": "postgresql",
    "postgresql+psycopg2": "postgresql",
    "postgresql+asyncpg": "postgresql",
    "psql": "postgresql",
    "pg": "postgresql",
    "memory": "memory",
    "mem": "memory",
}


def _not_a_store_url(url: str) -> str:
    """Why ``url`` is no store URL, with the one it probably meant (passwords hidden)."""
    scheme, sep, rest = url.partition("://")
    shown = _hide_password(url)
    if sep:
        meant = _SCHEME_GUESSES.get(scheme.lower())
        if scheme.lower() == "file" and rest.startswith("/"):  # file:///tmp/x.db: absolute
            return f"unsupported store URL scheme 'file': did you mean {sqlite_url(unquote(rest))}?"
        if meant is not None:
            guess = _hide_password(f"{meant}://{rest}")
            return f"unsupported store URL scheme {scheme!r}: did you mean {guess}?"
        return f"unsupported store URL scheme {scheme!r}: {_KINDS}"
    head, colon, tail = url.partition(":")
    meant = _SCHEME_GUESSES.get(head.lower()) if colon and "/" not in head else None
    if meant == "sqlite":
        return f"store URL {shown!r} is not a SQLite URL: {_sqlite_guess(tail)}"
    if meant == "memory":
        return f"store URL {shown!r} is not a store URL: did you mean memory://?"
    if meant == "postgresql":
        guess = _hide_password(f"postgresql://{tail.lstrip('/')}")
        return f"store URL {shown!r} is not a store URL: did you mean {guess}?"
    drive = colon and len(head) == 1 and head.isalpha()  # C:\\corral.db
    if url and (not colon or drive or url.startswith(("/", ".", "~"))):
        path = os.path.expanduser(url)
        guess = sqlite_url(path) if os.path.isabs(path) else f"sqlite:///{path}"
        return f"store URL {shown!r} has no scheme: did you mean {guess}?"
    return f"store URL {shown!r} has no scheme: {_KINDS}"


def display_url(url: str) -> str:
    """``url`` fit to show: a SQLite path made absolute (the file it opens from here), a
    password replaced by ``***``.

    >>> display_url("postgresql://app:s3cret@db.example/corral")
    'postgresql://app:***@db.example/corral'
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == "sqlite":
        where, mark, query = rest.partition("?")
        if where.startswith("/") and len(where) > 1 and where != "/:memory:":
            try:
                return sqlite_url(unquote(where[1:])) + mark + query
            except ValueError:  # a NUL in the path: shown as given
                return url
        return url
    return _hide_password(url)


def _hide_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if parts.password is None:
        # No authority parsed (``postgres:user:pw@host``, a near miss): hide what looks like one.
        return _USERINFO.sub(r"\1:***@", url) if "@" in url else url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _check_postgres_url(url: str) -> None:
    """Raise ConfigError for a URL no PostgreSQL client could read (a developer mistake,
    not an unavailable server)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (":abc" raises)
    except ValueError as exc:
        raise ConfigError(f"store URL {display_url(url)!r} is malformed: {exc}") from None
    if "\0" in url:
        raise ConfigError(f"store URL {display_url(url)!r} contains a NUL character")


def _postgres(url: str, scheme: str) -> Store:
    try:
        from corral.stores.postgres import PostgresStore
    except ImportError as exc:
        if exc.name == f"{__name__}.postgres":
            raise ConfigError(
                f"{scheme}:// store URLs are not supported by this version of corral"
            ) from None
        raise ConfigError(
            f"{scheme}:// store URLs need the PostgreSQL driver ({exc.name or exc} is missing): "
            "pip install 'corral[postgres]'"
        ) from None
    store: Store = PostgresStore(url)
    return store


@atexit.register
def _close_shared() -> None:
    with _shared_lock:
        for store in _shared.values():
            store.close()
        _shared.clear()


__all__ = [
    "DEFAULT_FILE",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "default_path",
    "default_url",
    "display_url",
    "open_store",
    "sqlite_url",
]


def _lazy(name: str) -> Any:
    """``SQLiteStore``, imported on first use: ``import corral`` and runs on ``memory://``
    do not load the SQLite backend."""
    if name == "SQLiteStore":
        from corral.stores.sqlite import SQLiteStore

        globals()[name] = SQLiteStore  # a whole class, stored once: later lookups skip this
        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # type checkers see the import above, not a catch-all __getattr__
    __getattr__ = _lazy
