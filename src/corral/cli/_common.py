"""What the commands share: their options (``--db``, ``--json``, ``--tenant``, ``--agent``,
``--reason``, ``--as``), a command group's typer app, opening the store they name and saying
which, reading from it, the exit codes, and a failure carrying its exit code.

Imports only what lies below the command line (the exceptions; the stores when one is
opened, so that ``corral check``, which touches none, does not load them); no command module.

Every command uses the same exit codes: 0 success; 1 the operation failed (no store
where one was looked for, a store that cannot be reached or read, nothing to act on,
a broken audit chain); 2 a usage error (a bad option, value or store URL, and typer's
own errors). A failure is one line on stderr, ``corral COMMAND: why``, never a traceback.

Every command that touches state names the store it used, once: the line
``store: URL`` on stderr in human output (stdout keeps only the command's own output,
so it can be piped), the ``store`` field in ``--json`` output (stdout is pure JSON).
The URL is shown with a SQLite path made absolute and any password hidden.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from corral.exceptions import ConfigError, StoreError, StoreMissing

if TYPE_CHECKING:
    from corral.stores import Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: How many of the newest runs a command looks through (filters, prefixes, reports, reach).
SCAN_LIMIT = 10_000

# -- options ---------------------------------------------------------------------------------

DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Store URL (default: CORRAL_DB, else the per-user store in your data directory).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable).")]
TenantOption = Annotated[str | None, typer.Option("--tenant", help="Only this tenant.")]
AgentOption = Annotated[str | None, typer.Option("--agent", help="Only this agent.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


def tenant_option(help: str) -> Any:
    """``--tenant`` where it means more than a filter (the approvals it may decide, the
    tenant a key belongs to)."""
    return typer.Option("--tenant", help=help)


def actor_option(*aliases: str) -> Any:
    """``--as`` (and ``aliases``): who makes a change, recorded with it."""
    return typer.Option(
        "--as",
        *aliases,
        help="Who makes the change (recorded in the audit log; default $USER@host).",
    )


ActorOption = Annotated[str | None, actor_option()]


def group(name: str, help: str) -> typer.Typer:
    """A command group's app (``corral NAME SUBCOMMAND``), set up as the main app is."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


class Fail(Exception):
    """A command failed: print ``str(self)`` as one line and exit with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def origin(db: str | None) -> str:
    """Where the store URL came from: ``--db``, ``CORRAL_DB`` or ``the default store``."""
    if db is not None:
        return "--db"
    return "CORRAL_DB" if os.environ.get("CORRAL_DB") else "the default store"


def say_store(shown: str) -> None:
    """The one line naming the store, for human output (on stderr: see the module docstring)."""
    print(f"store: {shown}", file=sys.stderr, flush=True)


def open_db(db: str | None, *, announce: bool = True, create: bool = False) -> tuple[Store, str]:
    """The store ``--db`` names (else ``CORRAL_DB``, else the per-user default) and its URL
    fit to show; with ``announce``, says which on stderr (``store: URL``).

    Without ``create`` no store is created: where none exists, ``no corral store at
    PATH`` (exit 1). A URL that cannot mean a store is a usage error (exit 2) naming
    where it came from; a store that cannot be reached is a failure (exit 1).
    """
    from corral.stores import default_url, display_url, open_store

    url = db if db is not None else default_url()
    shown = display_url(url)
    try:
        store = open_store(url, create=create)
    except StoreMissing as exc:
        raise Fail(EXIT_FAILED, f"{one_line(exc)}; {_missing_hint(db)}") from None
    except ConfigError as exc:
        raise Fail(EXIT_USAGE, f"{origin(db)}: {one_line(exc)}") from None
    except StoreError as exc:
        raise Fail(
            EXIT_FAILED, f"{origin(db)}: cannot open the store {shown}: {one_line(exc)}"
        ) from None
    if announce:
        say_store(shown)
    return store, shown


def _missing_hint(db: str | None) -> str:
    if db is None and not os.environ.get("CORRAL_DB"):
        return (
            "nothing has used the per-user store yet (an agent's first run, corral demo or "
            "corral init creates it); --db or CORRAL_DB name another"
        )
    return f"check the URL ({origin(db)}); corral init --db URL creates a store there"


def guarded(command: str, body: Callable[[], int]) -> int:
    """Run a command's body; a :class:`Fail`, a bad value or a store failing midway becomes
    one line on stderr (``corral COMMAND: why``) and its exit code."""
    try:
        return body()
    except Fail as exc:
        message, code = str(exc), exc.code
    except ConfigError as exc:
        message, code = one_line(exc), EXIT_USAGE
    except StoreError as exc:
        message, code = f"the store failed: {one_line(exc)}", EXIT_FAILED
    print(f"corral {command}: {message}", file=sys.stderr)
    return code


def read(what: str, url: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a store failing to answer is a failure naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except StoreError as exc:
        raise Fail(EXIT_FAILED, f"cannot read {what} from {url}: {one_line(exc)}") from None


def quoted(text: str, limit: int = 80) -> str:
    """``text`` quoted for a one-line message, cut to ``limit`` characters (an id or a key
    comes from the command line, and may be anything)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
