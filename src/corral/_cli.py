"""What the command groups share: the ``--db`` and ``--json`` options, and a failure
carrying its exit code."""

from __future__ import annotations

from typing import Annotated

import typer

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
