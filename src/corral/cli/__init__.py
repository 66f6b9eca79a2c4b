"""``corral``, the command line: one typer app (:mod:`corral.cli.app`), a module per command or
command group, what they share in ``_common`` (options, the store, exit codes) and ``_format``.

Sits at the top: imports anything below it; nothing below imports it. Importing the package
loads no command: ``python -m corral.cli.check`` then runs that module once, not twice.
"""

__all__ = ["main"]


def main() -> None:
    """The ``corral`` entry point (``corral.cli:main``)."""
    from corral.cli.app import main as run

    run()
