"""Text shown to people as it is, and nothing else: what a model, a tool or a caller wrote
(a task, an answer, an agent's name, an approval's arguments and purpose, a stop's message)
reaches operators through a terminal or a browser, and must not act on either.

:func:`visible` writes every character that would act instead of show as its escape:
terminal controls (ESC starts sequences that clear the screen, move the cursor over what an
approver reads, set the window title or plant a hyperlink; BEL, backspace and carriage
return overwrite), C1 controls, the bidirectional overrides and isolates that reorder what
is shown (``1000`` shown as ``0001``, the "Trojan Source" trick), zero-width characters that
hide text between visible ones, and line and paragraph separators. Newlines and tabs stay
unless told otherwise. The text is never shortened: what was there can still be read. An
escape is written as JSON writes one (``\\u001b``), so JSON text stays valid JSON with the
same meaning when it is made visible.

>>> visible("ok\\x1b[2J\\u202etxt.exe")
'ok\\\\u001b[2J\\\\u202etxt.exe'
>>> visible("two\\nlines")
'two\\nlines'
>>> visible("two\\nlines", newlines=False)
'two\\\\nlines'

The loggers ``corral`` and ``corral.server`` carry :class:`VisibleLogs`, which does the
same to the text a log line takes from its arguments.

Imports nothing of corral.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["VisibleLogs", "acts", "guard_logs", "visible", "visible_tree"]

# C0 but tab and newline; DEL and C1; the bidirectional marks, embeddings, overrides and
# isolates; zero-width spaces and joiners, the word joiner and invisible operators; line and
# paragraph separators; the byte order mark; the interlinear annotation marks.
_ACTS = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"
    "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
_ACTING = re.compile(f"[{_ACTS}]")
_ACTING_OR_NEWLINE = re.compile(f"[{_ACTS}\n\t]")


_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()  # written as JSON writes it: valid inside a JSON string
    return _SHORT.get(char) or f"\\u{ord(char):04x}"


def acts(text: str) -> bool:
    """Whether ``text`` holds a character :func:`visible` would escape (newlines and tabs
    aside)."""
    return _ACTING.search(text) is not None


def visible(text: Any, *, newlines: bool = True) -> str:
    """``text`` (any value, as ``str``) with every character that acts escaped (see the
    module docstring); with ``newlines=False``, newlines and tabs too (for one line)."""
    shown = text if isinstance(text, str) else str(text)
    pattern = _ACTING if newlines else _ACTING_OR_NEWLINE
    if pattern.search(shown) is None:  # the common case: nothing to do, nothing copied
        return shown
    return pattern.sub(_escape, shown)


def visible_tree(value: Any) -> Any:
    """``value`` (JSON-like) with every string in it, keys included, :func:`visible`."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible_tree(k): visible_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_tree(v) for v in value]
    return value


class VisibleLogs(logging.Filter):
    """A filter for corral's loggers: the text arguments of a record (an agent's name, a
    tenant, a stop's message) made :func:`visible`, on one line, before any handler formats
    it; corral's own message templates are left as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_one_line(a) for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: _one_line(v) for k, v in args.items()}
        return True


def _one_line(value: Any) -> Any:
    return visible(value, newlines=False) if isinstance(value, str) else value


def guard_logs(*names: str) -> None:
    """Give each named logger a :class:`VisibleLogs` filter (once)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, VisibleLogs) for f in logger.filters):
            logger.addFilter(VisibleLogs())
