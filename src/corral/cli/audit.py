"""``corral audit verify | checkpoint | export``: prove the audit log is intact, anchor it, ship it.

::

    corral audit verify [--db URL] [--anchor FILE] [--json]
    corral audit checkpoint --out FILE [--anchor FILE] [--db URL]
    corral audit export [--db URL] [--out FILE|-] [--after SEQ]

``verify`` walks the hash chain and names the first record that does not hold;
with ``--anchor`` (a file written by ``checkpoint`` and kept where the database's
users cannot write) it also detects a truncated or rewritten chain. A keyed chain
needs ``CORRAL_AUDIT_KEY``; with it, only records before the first keyed one may be
unkeyed (verify says where keying began and how many came before), and a chain with
no keyed record fails: it was written, or rewritten, without the key. ``checkpoint``
verifies, then writes the chain's head (sequence number, hash, time) to ``--out``.
``export`` writes the records as JSON Lines, oldest first.

Exit codes: 0 intact (or done); 1 the chain is broken (``verify``, ``checkpoint``), no
store there, or a store that cannot be reached or read; 2 a usage error: an invalid
store URL, an unreadable anchor, an ``--out`` that cannot be written, a keyed chain
without the key (one line on stderr, never a traceback).

Human output names the store on stderr (``store: URL``); so does ``export``, whose
stdout is only the records. ``verify --json`` prints one object whose shape is stable::

    {"store": str, "ok": bool, "checked": int, "head": int, "keyed": int,
     "keyed_from": int | null, "unkeyed": int, "anchor": int | null,
     "broken": {"seq": int, "why": str, "run_id": str | null, "kind": str | null} | null}

Imports the audit chain (:mod:`corral.record.audit`) and the shared ``_common``; no other
command module.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DbOption,
    Fail,
    JsonOption,
    group,
    guarded,
    one_line,
    open_db,
)
from corral.cli._format import echo
from corral.exceptions import ConfigError, StoreError
from corral.record import audit

EXIT_BROKEN = 1

audit_app = group(
    "audit", help="The audit log: verify its hash chain, checkpoint its head, export it."
)

Anchor = Annotated[
    Path | None,
    typer.Option("--anchor", help="A checkpoint file: also detect truncation and rewrites."),
]


@audit_app.command("verify")
def verify(
    db: DbOption = None,
    anchor: Anchor = None,
    json_out: JsonOption = False,
) -> None:
    """Verify the hash chain: exit 0 when intact, 1 naming the first broken record."""
    raise typer.Exit(guarded("audit verify", lambda: verify_command(db, anchor, as_json=json_out)))


@audit_app.command("checkpoint")
def checkpoint(
    out: Annotated[
        str, typer.Option("--out", help="Where to write the checkpoint ('-': standard output).")
    ],
    db: DbOption = None,
    anchor: Annotated[
        Path | None,
        typer.Option("--anchor", help="The previous checkpoint: the chain must still reach it."),
    ] = None,
) -> None:
    """Verify the chain, then write its head to a file to keep elsewhere."""
    raise typer.Exit(guarded("audit checkpoint", lambda: checkpoint_command(db, out, anchor)))


@audit_app.command("export")
def export(
    db: DbOption = None,
    out: Annotated[str, typer.Option("--out", help="File to write ('-': standard output).")] = "-",
    after: Annotated[
        int, typer.Option("--after", min=0, help="Only records after this sequence number.")
    ] = 0,
) -> None:
    """Write the audit records as JSON Lines, oldest first."""
    raise typer.Exit(guarded("audit export", lambda: export_command(db, out, after)))


# -- the commands ------------------------------------------------------------------------
def verify_command(db: str | None, anchor: Path | None, *, as_json: bool = False) -> int:
    wanted = _anchor(anchor)
    store, url = open_db(db, announce=not as_json)
    result: audit.VerifyResult = _read(url, lambda: audit.verify(store, anchor=wanted))
    if as_json:
        echo(json.dumps({"store": url, **result.to_dict()}))
    elif result.ok:
        echo(result)
    else:
        echo(f"corral audit verify: {url}: {result}", err=True)
    return EXIT_OK if result.ok else EXIT_BROKEN


def checkpoint_command(db: str | None, out: str, anchor: Path | None) -> int:
    previous = _anchor(anchor)
    store, url = open_db(db)
    try:
        head = _read(url, lambda: audit.checkpoint(store, anchor=previous))
    except ValueError as exc:
        raise Fail(EXIT_BROKEN, f"{url}: {exc}; no checkpoint written") from None
    if out == "-":
        echo(json.dumps(head, indent=2))
        return EXIT_OK
    try:
        audit.write_anchor(head, out)
    except OSError as exc:
        raise Fail(EXIT_USAGE, f"--out: cannot write {out}: {exc.strerror or exc}") from None
    echo(f"checkpoint of record {head['seq']} ({head['hash'][:16]}...) written to {out}")
    return EXIT_OK


def export_command(db: str | None, out: str, after: int) -> int:
    store, url = open_db(db)
    try:
        with _output(out) as stream:
            count = _read(url, lambda: audit.export(store, stream, after=after))
    except BrokenPipeError:  # `corral audit export | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if out != "-":
        echo(f"{count} records written to {out}")
    return EXIT_OK


# -- plumbing ----------------------------------------------------------------------------
def _anchor(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        return audit.load_anchor(path)
    except ConfigError as exc:
        raise Fail(EXIT_USAGE, f"--anchor: {exc}") from None


def _read(url: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except audit.KeyRequired as exc:
        raise Fail(EXIT_USAGE, f"{url}: {exc}") from None
    except StoreError as exc:
        raise Fail(EXIT_FAILED, f"cannot read the audit log from {url}: {one_line(exc)}") from None


@contextlib.contextmanager
def _output(out: str) -> Iterator[IO[str]]:
    if out == "-":
        yield sys.stdout
        return
    try:
        stream = open(out, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise Fail(EXIT_USAGE, f"--out: cannot write {out}: {exc.strerror or exc}") from None
    with stream:
        yield stream
