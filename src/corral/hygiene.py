"""Observation hygiene: HTML to text, size caps, JSON-safety of tool outputs."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from typing import Any, Protocol

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

# Text is treated as HTML only when it has a real HTML element (or a doctype or a
# comment): ``List<String>`` or ``a <b and c> d`` in plain text must survive untouched.
_ELEMENTS = (
    "a|abbr|address|area|article|aside|audio|b|base|bdi|bdo|blockquote|body|br|button|canvas|"
    "caption|cite|code|col|colgroup|data|datalist|dd|del|details|dfn|dialog|div|dl|dt|em|embed|"
    "fieldset|figcaption|figure|footer|form|h[1-6]|head|header|hgroup|hr|html|i|iframe|img|input|"
    "ins|kbd|label|legend|li|link|main|map|mark|menu|meta|meter|nav|noscript|object|ol|optgroup|"
    "option|output|p|param|picture|pre|progress|q|rp|rt|ruby|s|samp|script|section|select|slot|"
    "small|source|span|strong|style|sub|summary|sup|svg|table|tbody|td|template|textarea|tfoot|th|"
    "thead|time|title|tr|track|u|ul|var|video|wbr|center|font|frame|frameset|marquee|tt"
)
_TAG = re.compile(rf"<(?:!doctype\s|!--|/?(?:{_ELEMENTS})(?:[\s/][^<>]*)?>)", re.IGNORECASE)
_BLANKS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t\f\v]+")


def looks_like_html(text: str) -> bool:
    return "<" in text and _TAG.search(text) is not None


def html_to_text(text: str) -> str:
    """Visible text of an HTML fragment or page: scripts, styles and comments dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(text, "html.parser")
    for node in soup(["script", "style", "noscript", "template", "head"]):
        node.decompose()
    plain = soup.get_text("\n")
    plain = _SPACES.sub(" ", plain)
    plain = "\n".join(line.strip() for line in plain.splitlines())
    return _BLANKS.sub("\n\n", plain).strip()


def cap(text: str, max_chars: int, *, guard: Callable[[str, int], str] | None = None) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, saying how many were dropped.

    The marker counts the characters actually cut and is itself within the cap; a cap
    too small for any marker cuts without one. ``guard(kept, limit)`` may rewrite the
    end of the kept part within ``limit`` characters (a secret's beginning left at the cut).
    """
    if len(text) <= max_chars:
        return text
    keep = max_chars
    while True:  # the marker's length depends on the count it reports: find the fixed point
        marker = f"\n[... {len(text) - keep} more characters cut]"
        fitted = max_chars - len(marker)
        if fitted < 0:
            marker, fitted = "", max_chars
        if fitted == keep or not marker:
            kept = text[:fitted]
            return (kept if guard is None else guard(kept, fitted)) + marker
        keep = fitted


class Scrubber(Protocol):
    """What :func:`clean_output` scrubs with (a :class:`~corral.redact.Redactor`)."""

    def secrets_only(self, value: Any) -> Any: ...

    def cut_tail(self, text: str, limit: int | None = None) -> str: ...


class OutputProblem(Exception):
    """The output cannot be handed to the model; ``detail`` is a short code."""

    def __init__(self, detail: str, message: str) -> None:
        self.detail = detail
        super().__init__(message)


def clean_output(
    value: Any, *, strip_html: bool, max_chars: int, scrub: Scrubber | None = None
) -> Any:
    """Return what the model may see of ``value``.

    Text is stripped of HTML (when enabled), scrubbed of secrets (``scrub``), then
    capped, so no cut can split a secret past the scrubbing. Structured values are
    scrubbed first, and must be JSON-serialisable and within the cap once serialised:
    they cannot be cut without changing their meaning, so an oversized one is a
    problem, not a cut.
    """
    if scrub is not None and type(value) is not str:
        try:
            value = scrub.secrets_only(value)
        except ValueError as exc:
            problem = f"output cannot be scrubbed of secrets: {exc}"
            raise OutputProblem("not_json", problem) from None
    if isinstance(value, str):
        text = html_to_text(value) if strip_html and looks_like_html(value) else value
        if scrub is not None:
            return cap(scrub.secrets_only(text), max_chars, guard=scrub.cut_tail)
        return cap(text, max_chars)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputProblem("not_json", f"output {value!r} is not a JSON number")
        return value
    try:
        body = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise OutputProblem("not_json", f"output is not JSON-serialisable: {exc}") from None
    if len(body) > max_chars:
        raise OutputProblem(
            "output_too_large", f"output is {len(body)} characters as JSON, the cap is {max_chars}"
        )
    return value


def render(value: Any) -> str:
    """The text form of an observation, for a model's context."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
