"""The ``corral`` command line as typer builds it: every command and subcommand, walked."""

from __future__ import annotations

from typing import Any

import typer.main

from corral.cli.app import app


def commands() -> dict[tuple[str, ...], Any]:
    """Every leaf command by its path (``("kill", "enable")``), groups walked."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(path: tuple[str, ...], command: Any) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:  # a group
            for name, sub in subcommands.items():
                walk((*path, name), sub)
        else:
            found[path] = command

    walk((), typer.main.get_command(app))
    return found


def options(command: Any) -> set[str]:
    """The long option names a command takes (``--db``, ``--json``, ...)."""
    return {
        name
        for param in command.params
        if param.param_type_name == "option"
        for name in param.opts
        if name.startswith("--")
    }


def with_option(name: str) -> set[tuple[str, ...]]:
    """The paths of the commands taking option ``name``."""
    return {path for path, command in commands().items() if name in options(command)}
