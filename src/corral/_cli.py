"""What the command groups share: the ``--db`` and ``--json`` options, opening the store
they name, and a failure carrying its exit code."""

from __future__ import annotations

from typing import Annotated

import typer

from .exceptions import ConfigError, StoreError, StoreMissing
from .stores import Store, default_url, display_url, open_store

EXIT_FAILED = 1
EXIT_USAGE = 2

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Store URL (default CORRAL_DB, then sqlite:///corral.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable).")]


class Fail(Exception):
    """A command failed: print ``str(self)`` as one line and exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def open_db(db: str | None) -> tuple[Store, str]:
    """The store ``--db`` names (else ``CORRAL_DB``, else the default) and its URL; a store
    that cannot be opened is a usage error naming where the URL came from.

    These commands only read or change operator state: a SQLite file that does not exist
    is not created (``no corral store at PATH``, exit 1), since no agent uses it.
    """
    url = db if db is not None else default_url()
    try:
        return open_store(url, create=False), url
    except StoreMissing as exc:
        raise Fail(EXIT_FAILED, str(exc)) from None
    except (ConfigError, StoreError) as exc:
        where = "--db" if db is not None else "CORRAL_DB"
        shown = display_url(url)
        raise Fail(EXIT_USAGE, f"{where}: cannot open the store {shown}: {one_line(exc)}") from None
