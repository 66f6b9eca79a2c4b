"""Observation hygiene: HTML to text, size caps, JSON-safety of tool outputs."""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

_TAG = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9-]*(\s[^<>]*)?/?\s*>")
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


def cap(text: str, max_chars: int) -> str:
    """Cut ``text`` to ``max_chars``, saying how much was dropped."""
    if len(text) <= max_chars:
        return text
    marker = f"\n[... {len(text) - max_chars} more characters cut]"
    keep = max(0, max_chars - len(marker))
    return text[:keep] + marker


class OutputProblem(Exception):
    """The output cannot be handed to the model; ``detail`` is a short code."""

    def __init__(self, detail: str, message: str) -> None:
        self.detail = detail
        super().__init__(message)


def clean_output(value: Any, *, strip_html: bool, max_chars: int) -> Any:
    """Return what the model may see of ``value``.

    Text is stripped of HTML (when enabled) and capped. Structured values must be
    JSON-serialisable and within the cap once serialised: they cannot be cut
    without changing their meaning, so an oversized one is a problem, not a cut.
    """
    if isinstance(value, str):
        text = html_to_text(value) if strip_html and looks_like_html(value) else value
        return cap(text, max_chars)
    if value is None or isinstance(value, bool | int | float):
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
