"""``corral prune --older-than 30d``: drop the recorded bodies (model responses, tool
outputs) of runs that ended before a cutoff. The runs, their events and the audit chain
stay; each recording keeps its digest, which the run's ``run_end`` event also holds, so
``corral audit verify`` still passes and a replay says the recording was pruned.

Exit codes: 0 done (also when there was nothing to prune); 1 no store there, or a store
that cannot be reached or written; 2 an invalid option (``--older-than`` must be a whole
number of ``s``, ``m``, ``h`` or ``d``) or store URL.

``corral prune --json`` prints one object whose shape is stable::

    {"store": str, "older_than": str, "cutoff": str (ISO 8601), "dry_run": bool,
     "pruned": int, "runs": [str]}

Imports the stores and the shared ``_common`` and ``_format``.
"""

from __future__ import annotations

import re
import time
from typing import Annotated

import typer

from corral.cli._common import EXIT_OK, DbOption, JsonOption, guarded, open_db, read
from corral.cli._format import iso, print_json
from corral.exceptions import ConfigError

_AGE = re.compile(r"^([0-9]+)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` in seconds; raises :class:`ConfigError` otherwise.

    >>> parse_age("30d"), parse_age("90m")
    (2592000, 5400)
    """
    match = _AGE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"--older-than: expected a whole number and s, m, h or d (30d, 12h), got {text!r}"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


def prune(
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Prune runs that ended longer ago than this (30d)."),
    ],
    db: DbOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be pruned; change nothing.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Drop the recorded bodies of runs that ended before a cutoff (their digests stay)."""
    raise typer.Exit(
        guarded(
            "prune",
            lambda: prune_command(older_than, db=db, dry_run=dry_run, as_json=json_out),
        )
    )


def prune_command(older_than: str, *, db: str | None, dry_run: bool, as_json: bool) -> int:
    """Prune (or with ``dry_run`` list) the recordings past the cutoff; the exit code."""
    age = parse_age(older_than)
    store, url = open_db(db, announce=not as_json)
    now = time.time()
    cutoff = now - age
    runs: list[str] = read(
        "recordings", url, store.prune_recordings, ended_before=cutoff, now=now, dry_run=dry_run
    )
    if as_json:
        print_json(
            {
                "store": url,
                "older_than": older_than,
                "cutoff": iso(cutoff),
                "dry_run": dry_run,
                "pruned": len(runs),
                "runs": runs,
            }
        )
        return EXIT_OK
    verb = "would prune" if dry_run else "pruned"
    typer.echo(
        f"{verb} the recordings of {len(runs)} run{'s' if len(runs) != 1 else ''} "
        f"that ended before {iso(cutoff)}"
        + ("" if dry_run or not runs else "; their digests stay, sealed in the audit chain")
    )
    return EXIT_OK
