"""Stores: shared state behind one Protocol, chosen by URL.

=================================  ==========================================================
``sqlite:///corral.db``            a SQLite file, relative to the working directory (default)
``sqlite:////var/lib/corral.db``   a SQLite file by absolute path; ``?synchronous=FULL``
                                   also survives power loss, at a cost per commit
``sqlite://``                      SQLite in memory (also ``sqlite:///:memory:``)
``postgresql://user@host/db``      PostgreSQL, for several processes on several machines
``memory://`` / ``memory://NAME``  dictionaries in this process, for tests
=================================  ==========================================================

The default is ``CORRAL_DB`` if set, else ``sqlite:///corral.db``: the CLI and
every run that names no store reach the same state.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ..exceptions import ConfigError, StoreMissing
from .base import Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

DEFAULT_URL = "sqlite:///corral.db"

_shared: dict[str, Store] = {}
_shared_lock = threading.Lock()


def default_url() -> str:
    """``CORRAL_DB`` if set, else ``sqlite:///corral.db``."""
    return os.environ.get("CORRAL_DB") or DEFAULT_URL


def open_store(url: str | Store | None = None, *, create: bool = True) -> Store:
    """Open a store from a URL (see the module docstring), or pass a store object through.

    One store per URL per process, shared by every run that names it: ``memory://``
    (``memory://NAME`` for a separate one) is therefore one in-process store, so a
    kill switch set through it reaches every run; a database URL opens its
    connection once. Raises :class:`~corral.exceptions.ConfigError` for a URL it
    cannot use, :class:`~corral.exceptions.StoreError` when the database cannot be
    reached. With ``create=False`` a SQLite file that does not exist is not created:
    :class:`~corral.exceptions.StoreMissing` (``no corral store at PATH``) instead, for
    commands that only read or change operator state.
    """
    if url is None:
        url = default_url()
    if not isinstance(url, str):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"store URL {url!r} has no scheme: use sqlite:///PATH, postgresql://... or memory://"
        )
    factory: Callable[[], Store]
    if scheme == "memory":
        key, factory = url, MemoryStore
    elif scheme == "sqlite":
        path, synchronous = _sqlite_target(url, rest)
        path = path if path == ":memory:" else os.path.abspath(path)
        key = "sqlite://" + path
        if not create and path != ":memory:" and not os.path.exists(path):
            raise StoreMissing(f"no corral store at {path}")

        def factory() -> Store:
            return SQLiteStore(path, synchronous=synchronous)
    elif scheme in ("postgresql", "postgres"):
        _check_postgres_url(url)
        key = url

        def factory() -> Store:
            return _postgres(url, scheme)
    else:
        raise ConfigError(
            f"unsupported store URL scheme {scheme!r}: use sqlite:///PATH, "
            "postgresql://... or memory://"
        )
    with _shared_lock:
        store = _shared.get(key)
        if store is None or getattr(store, "closed", False):
            store = _shared[key] = factory()
        return store


def _sqlite_target(url: str, rest: str) -> tuple[str, str]:
    """The file (or ``:memory:``) and the ``synchronous`` setting a SQLite URL names."""
    where, _, query = rest.partition("?")
    if where in ("", "/:memory:"):
        path = ":memory:"
    elif where.startswith("/") and len(where) > 1:
        path = unquote(where[1:])
        if "\0" in path:
            raise ConfigError(f"SQLite URL {url!r}: the path contains a NUL character")
    else:
        raise ConfigError(
            f"SQLite URL {url!r}: use sqlite:///relative/path.db, sqlite:////absolute/path.db "
            "or sqlite:// (in memory)"
        )
    synchronous = "NORMAL"
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "synchronous":
            raise ConfigError(f"SQLite URL {url!r}: unknown option {name!r} (known: synchronous)")
        synchronous = value.upper()
    return path, synchronous


def display_url(url: str) -> str:
    """``url`` fit to show: a password in it replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("@", 1)[-1] if "@" in url else url
    if parts.password is None:
        return url
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
        raise ConfigError(f"store URL {url!r} is malformed: {exc}") from None
    if "\0" in url:
        raise ConfigError(f"store URL {url!r} contains a NUL character")


def _postgres(url: str, scheme: str) -> Store:
    try:
        from .postgres import PostgresStore
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
    "DEFAULT_URL",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "default_url",
    "display_url",
    "open_store",
]
