"""The dashboard's HTML: the Jinja2 templates beside this module, rendered with every
value escaped, and the headers every page carries (a Content-Security-Policy that
allows only the server's own scripts and styles: no inline script, no inline style).

Imports the record's views (times) and Jinja2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final

from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.responses import HTMLResponse

from corral import charts
from corral._visible import visible
from corral.record.views import iso_seconds

#: Where the templates and the static files are (shipped in the package).
HERE: Final = Path(__file__).parent
TEMPLATES: Final = HERE / "templates"
STATIC: Final = HERE / "static"

#: The Content-Security-Policy of every page: the server's own files only.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def left(expires: float | None, now: float | None = None) -> str:
    """The time until ``expires`` (epoch seconds) as ``4m 05s``; ``past`` once it passed."""
    if not expires:
        return "—"
    remaining = expires - (time.time() if now is None else now)
    if remaining <= 0:
        return "past"
    return duration(remaining)


def duration(seconds: float | None) -> str:
    """``seconds`` as ``85 µs``, ``8.5 ms``, ``12.3 s``, ``4m 05s`` or ``2h 10m``."""
    if seconds is None:
        return "—"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def compact(value: Any) -> str:
    """``value`` as one line of JSON (for arguments and event data)."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def pretty(value: Any) -> str:
    """``value`` as indented JSON (an approval's exact arguments)."""
    return json.dumps(value, sort_keys=True, indent=2, default=str, ensure_ascii=False)


def _shown(value: Any) -> Any:
    """What a ``{{ }}`` puts on a page: text that acts (controls, bidirectional overrides,
    zero-width characters) escaped, so that an approver reads what is there
    (:mod:`corral._visible`); the pages' own markup as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader([TEMPLATES, charts.TEMPLATES]),
        autoescape=True,  # every template, whatever its name: hostile text renders as text
        finalize=_shown,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        duration=duration, left=left, compact=compact, pretty=pretty, stamp=iso_seconds
    )
    return env


ENV: Final = _environment()


def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """The template ``name`` rendered with ``context``, with the pages' headers."""
    html = ENV.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)
