"""How the commands write to the terminal: JSON, consoles for tables, aligned plain
columns, lines. Everything printed passes :func:`corral._visible.visible` on its way
out (:func:`echo`, :func:`print_json`, :func:`columns`, and every string a :func:`console`
renders): a task, an answer, an agent's name or an approval's arguments written by a model
or a caller are shown, never acted on by the terminal.

Imports rich, typer and :mod:`corral._visible` only (``corral check`` loads no store).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console, ConsoleOptions, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.segment import Segment
from rich.text import Text

from corral._visible import acts, visible

__all__ = ["ProgressBar", "SafeConsole", "columns", "console", "echo", "print_json"]


class SafeConsole(Console):
    """A rich console that shows every character it is given: strings are made
    :func:`~corral._visible.visible` before they are measured (text, table cells),
    and, as a backstop for :class:`~rich.text.Text` built from data, every segment of text
    it renders too. Its own styling and cursor control (control segments) are unaffected."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(visible(text), **kwargs)

    def render(self, renderable: RenderableType, options: ConsoleOptions | None = None) -> Any:
        for segment in super().render(renderable, options):
            if segment.control or not acts(segment.text):
                yield segment
            else:
                yield Segment(visible(segment.text), segment.style)


def console(**options: Any) -> Console:
    """A console for tables: piped output keeps rows on one line unless COLUMNS is set."""
    probe = SafeConsole(**options)
    wide = not probe.is_terminal and "COLUMNS" not in os.environ
    return SafeConsole(width=200, **options) if wide else probe


def echo(text: object = "", *, err: bool = False) -> None:
    """``text`` and a newline on stdout (stderr with ``err``), made visible."""
    typer.echo(visible(text), err=err)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    sys.stdout.write(visible(json.dumps(value, indent=2, default=str)) + "\n")


def columns(header: Sequence[str], lines: Iterable[Sequence[object]]) -> None:
    """``header`` and ``lines`` as plain columns, each as wide as its widest cell."""
    rows = [tuple(header), *(tuple(visible(c, newlines=False) for c in line) for line in lines)]
    widths = [max(len(str(c)) for c in col) for col in zip(*rows, strict=False)]
    for row in rows:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


class ProgressBar:
    """A progress bar on stderr for long work, labelled ``label`` (nothing with ``quiet``,
    and nothing left on the screen once done). :meth:`advance` ticks one item done;
    :meth:`update` sets how many of how many (a total learnt as the work goes)."""

    def __init__(self, label: str, *, total: int | None = None, quiet: bool = False) -> None:
        self.bar: Progress | None = None
        if not quiet:
            self.bar = Progress(
                TextColumn(visible(label)),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=SafeConsole(stderr=True),
                transient=True,
            )
            self.job = self.bar.add_task("", total=total)

    def __enter__(self) -> ProgressBar:
        if self.bar is not None:
            self.bar.start()
        return self

    def advance(self, description: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.job, advance=1, description=visible(description))

    def update(self, done: int, total: int, description: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.job, completed=done, total=total, description=visible(description))

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
