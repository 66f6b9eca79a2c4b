"""Text of values and exceptions that may be hostile: never raises, always bounded.

A tool, a model or a store object can hand corral anything: an exception whose
``__str__`` raises, a list nested a million deep, an int too long to print. What corral
says about such a thing (a stop's message, an event) must still be a short ``str``.
"""

from __future__ import annotations

from typing import Any

#: The most characters a message built from a foreign value keeps.
MAX_TEXT = 500


def text(value: Any, max_chars: int = MAX_TEXT) -> str:
    """``str(value)`` cut to ``max_chars``, or a placeholder naming its type when ``str``
    raises or does not return text."""
    try:
        out = str(value)
        if type(out) is not str:  # a str subclass: its own methods are not trusted
            out = str.__str__(out)
    except Exception as exc:  # a foreign __str__ may raise anything
        return f"<{type_name(value)} that cannot be shown: {type_name(exc)}>"
    return out if len(out) <= max_chars else out[: max_chars - 3] + "..."


def shown(value: Any, max_chars: int = 60) -> str:
    """``repr(value)`` cut to ``max_chars``, or a placeholder naming its type when ``repr``
    raises (nested too deeply, a hostile ``__repr__``, an int too long to print)."""
    try:
        out = repr(value)
        if type(out) is not str:
            out = str.__str__(out)
    except Exception as exc:  # a foreign __repr__ may raise anything
        return f"<{type_name(value)} that cannot be shown: {type_name(exc)}>"
    return out if len(out) <= max_chars else out[: max_chars - 3] + "..."


def error_text(exc: object, max_chars: int = MAX_TEXT) -> str:
    """``Type: message`` (``Type`` alone for an empty message), bounded, never raising."""
    message = text(exc, max_chars)
    name = type_name(exc)
    return f"{name}: {message}" if message else name


def type_name(value: Any) -> str:
    """The name of ``value``'s type (read from the type, never from the value)."""
    name = getattr(type(value), "__name__", None)
    return name if type(name) is str else "object"
