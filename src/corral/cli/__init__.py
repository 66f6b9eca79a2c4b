"""``corral``, the command line: one typer app (``app``), a module per command group.

Sits at the top: imports anything below it.
"""

from corral.cli.app import app, main

__all__ = ["app", "main"]
