"""Observation hygiene: HTML to text, size caps, JSON-safety of tool outputs.

Every step is bounded, whatever a tool returns:

- HTML is parsed incrementally, at most :data:`HTML_INPUT_FACTOR` times the cap of
  markup (at least :data:`HTML_INPUT_FLOOR`), for at most :data:`PARSE_BUDGET`
  seconds (less when the run's deadline, :data:`corral.clock.DEADLINE`, is nearer),
  and no further than the cap of visible text needs. A page cut short says so.
  Text is only ever taken from complete text nodes outside hidden elements: a cut
  inside a tag, a comment, a ``<script>`` or ``<style>`` shows nothing of it.
- A structured output is measured (iteratively, stopping at the cap) before it is
  serialised. One over the cap is written as JSON text only as far as the cap needs and
  cut with a marker, or refused when it has an output schema (a cut value could not be
  validated), in time proportional to the cap, never to its own size.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any, Protocol

from corral.clock import DEADLINE
from corral.gateway._jsonable import OutputProblem, json_prefix

__all__ = [
    "OutputProblem",
    "Scrubber",
    "cap",
    "clean_output",
    "html_to_text",
    "json_size_floor",
    "looks_like_html",
    "render",
]

#: At most this many times the cap of markup is parsed (at least HTML_INPUT_FLOOR).
HTML_INPUT_FACTOR = 16
HTML_INPUT_FLOOR = 64 * 1024
#: At most this long is spent parsing one output (seconds), less near the run's deadline.
PARSE_BUDGET = 0.05
#: Even past the run's deadline, a page gets this long to yield some text (seconds).
PARSE_FLOOR = 0.005
#: A structured output cut as text is written to JSON_READ_FACTOR times the cap plus
#: JSON_READ_EXTRA characters (its marker counts exactly what was cut up to there).
JSON_READ_FACTOR, JSON_READ_EXTRA = 2, 4096
_CHUNK = 16 * 1024
#: Markup left unconsumed (an unterminated tag, comment or script) beyond this ends parsing.
_MAX_PENDING = 256 * 1024

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
# What unconsumed input starting like this is: markup never closed, never text.
_MARKUP_START = re.compile(r"<[A-Za-z/!?]")
_HIDDEN = frozenset({"script", "style", "noscript", "template", "head"})


def looks_like_html(text: str) -> bool:
    return "<" in text and _TAG.search(text) is not None


class _Visible(HTMLParser):
    """Collects the visible text nodes, normalised, counting their size as it goes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.size = 0
        self._hidden = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.end_text()
        if tag in _HIDDEN:
            self._hidden += 1

    def handle_startendtag(self, tag: str, attrs: Any) -> None:
        self.end_text()

    def handle_endtag(self, tag: str) -> None:
        self.end_text()
        if tag in _HIDDEN and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._text.append(data)  # one text node may arrive in several pieces

    def unknown_decl(self, data: str) -> None:
        if data.startswith("CDATA[") and not self._hidden:
            self._text.append(data[6:])

    def end_text(self) -> None:
        """The text node being collected is complete (a tag or the end came)."""
        if self._text:
            node = _SPACES.sub(" ", "".join(self._text))
            self._text = []
            node = "\n".join(line.strip() for line in node.splitlines())
            self.parts.append(node)
            self.size += len(node)

    @property
    def in_hidden(self) -> bool:
        return self._hidden > 0 or getattr(self, "cdata_elem", None) is not None


def _parse_until(deadline: float | None) -> float:
    now = time.monotonic()
    until = now + PARSE_BUDGET
    if deadline is not None:
        until = min(until, max(deadline, now + PARSE_FLOOR))
    return until


def html_to_text(
    text: str, max_chars: int | None = None, *, guard: Callable[[str, int], str] | None = None
) -> str:
    """Visible text of an HTML fragment or page: scripts, styles and comments dropped.

    With ``max_chars``, parsing stops once that much text is found, after at most a
    bounded multiple of it of markup, or when the parse budget runs out; the text
    then ends with a marker saying how much of the page was not read. ``guard`` rewrites
    the end of a cut text as :func:`cap`'s does (a secret's beginning left at the cut).
    """
    limit = len(text)
    if max_chars is not None:
        limit = min(limit, max(HTML_INPUT_FACTOR * max_chars, HTML_INPUT_FLOOR))
    until = _parse_until(DEADLINE.get())
    parser = _Visible()
    read = 0
    with contextlib.suppress(Exception):  # markup the parser rejects: keep the text read
        while read < limit:
            end = min(limit, read + _CHUNK)
            parser.feed(text[read:end])
            read = end
            if max_chars is not None and parser.size > max_chars:
                break  # enough text: the rest would be cut anyway
            if time.monotonic() >= until or len(parser.rawdata) > _MAX_PENDING:
                break
    unread = len(text) - read
    if unread == 0:
        rest = parser.rawdata
        if not parser.in_hidden and not _MARKUP_START.match(rest):
            with contextlib.suppress(Exception):
                parser.close()  # flush trailing text (a character reference at the very end)
    # Otherwise what the parser still holds is cut markup (half a tag, an open comment)
    # or hidden text: it is dropped, never shown.
    parser.end_text()
    plain = _BLANKS.sub("\n\n", "\n".join(parser.parts)).strip()
    if unread == 0 or max_chars is None:
        return plain if max_chars is None else cap(plain, max_chars, guard=guard)
    return _cut_page(plain, max_chars, unread, guard)


def _cut_page(
    text: str, max_chars: int, unread: int, guard: Callable[[str, int], str] | None = None
) -> str:
    """``text`` (from a page read in part) within ``max_chars``, saying what was not read."""
    marker = f"\n[... cut: {unread} more characters of the page not read]"
    keep = max_chars - len(marker)
    if keep < 0:
        return text[:max_chars] if guard is None else guard(text[:max_chars], max_chars)
    kept = text[:keep] if guard is None else guard(text[:keep], keep)
    return kept + marker


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
    """What :func:`clean_output` scrubs with (a :class:`~corral.record.redact.Redactor`)."""

    def secrets_only(self, value: Any) -> Any: ...

    def cut_tail(self, text: str, limit: int | None = None) -> str: ...


def json_size_floor(value: Any, limit: int) -> int:
    """A lower bound of the length of ``value`` as JSON, counted until it passes ``limit``.

    Iterative (any depth), and it stops as soon as the bound passes ``limit``, so it
    visits at most about ``limit`` items whatever the size of ``value``. Raises
    ``OutputProblem("not_json")`` for a value that contains itself.
    """
    total = 0
    stack: list[Any] = [value]
    open_ids: set[int] = set()  # the containers being walked (a cycle comes back to one)
    while stack:
        item = stack.pop()
        if isinstance(item, _Exit):
            open_ids.discard(item.id)
            continue
        # The base types' own methods: a subclass's __len__ or __iter__ may lie or raise,
        # while json.dumps reads the values as the base type holds them.
        if isinstance(item, str):
            total += str.__len__(item) + 2
        elif isinstance(item, dict | list | tuple):
            n = _base_len(item)
            # As json.dumps writes it: brackets, ", " between items, and for a dict each
            # key's quotes and ": " (the keys' own text is added below).
            total += 2 * n + (4 * n if isinstance(item, dict) else 0)
            if total > limit:
                return total
            if id(item) in open_ids:
                raise OutputProblem(
                    "not_json", "output is not JSON-serialisable: it contains itself"
                )
            open_ids.add(id(item))
            stack.append(_Exit(id(item)))
            if isinstance(item, dict):
                for key, child in dict.items(item):
                    if isinstance(key, str):
                        total += str.__len__(key)
                    stack.append(child)
            elif isinstance(item, list):
                stack.extend(list.__iter__(item))
            else:
                stack.extend(tuple.__iter__(item))
        else:
            total += 1
        if total > limit:
            return total
    return total


def _base_len(item: dict[Any, Any] | list[Any] | tuple[Any, ...]) -> int:
    if isinstance(item, dict):
        return dict.__len__(item)
    return list.__len__(item) if isinstance(item, list) else tuple.__len__(item)


class _Exit:
    __slots__ = ("id",)

    def __init__(self, ident: int) -> None:
        self.id = ident


def clean_output(
    value: Any,
    *,
    strip_html: bool,
    max_chars: int,
    scrub: Scrubber | None = None,
    cut_json: bool = True,
) -> Any:
    """Return what the model may see of ``value``.

    Text is stripped of HTML (when enabled), scrubbed of secrets (``scrub``), then
    capped, so no cut can split a secret past the scrubbing. Structured values are
    scrubbed first and must be JSON-serialisable; one within the cap once serialised is
    handed over as it is. One over the cap becomes its JSON text, scrubbed again and cut
    with a marker, when ``cut_json`` (the tool has no output schema); otherwise it is a
    problem (``output_too_large``): a cut value would not be the value the schema
    validated.
    """
    if scrub is not None and type(value) is not str:
        try:
            value = scrub.secrets_only(value)
        except ValueError as exc:
            problem = f"output cannot be scrubbed of secrets: {exc}"
            raise OutputProblem("not_json", problem) from None
    if isinstance(value, str):
        guard = None if scrub is None else scrub.cut_tail
        text = value
        if strip_html and "<" in value:
            # Only the part that would be parsed is looked at: past it nothing is shown.
            limit = max(HTML_INPUT_FACTOR * max_chars, HTML_INPUT_FLOOR)
            if _TAG.search(value if len(value) <= limit else value[:limit]):
                text = html_to_text(value, max_chars, guard=guard)
        if scrub is not None:
            return cap(scrub.secrets_only(text), max_chars, guard=guard)
        return cap(text, max_chars)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise OutputProblem("not_json", f"output {value!r} is not a JSON number")
        return value
    floor = json_size_floor(value, max_chars)
    body = None
    if floor <= max_chars:
        try:
            body = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise OutputProblem("not_json", f"output is not JSON-serialisable: {exc}") from None
        except RecursionError:
            raise OutputProblem(
                "not_json", "output is nested too deeply to serialise as JSON"
            ) from None
        if len(body) <= max_chars:
            return value
    if cut_json:
        return _cut_json(value, max_chars, scrub, body)
    size = f"{len(body)} characters" if body else f"more than {max_chars} characters"
    raise OutputProblem(
        "output_too_large",
        f"output is {size} as JSON, the cap is {max_chars}; a value with an output "
        "schema is never cut",
    )


def _cut_json(value: Any, max_chars: int, scrub: Scrubber | None, body: str | None) -> str:
    """``value`` (scrubbed) as JSON text within ``max_chars``, cut with a marker counting
    what was cut. The text is written to twice the cap and 4,096 characters more: well
    past the cut, so that scrubbing it again (for a secret JSON escaping or joining
    strings could have formed) sees whatever the cut could split, and no further (the
    writing is Python, a few milliseconds); the marker says "over" when the JSON is longer
    still. ``body``: the whole text, when it is known."""
    if body is not None:
        text, complete = body, True
    else:
        text, complete = json_prefix(value, JSON_READ_FACTOR * max_chars + JSON_READ_EXTRA)
    guard = None
    if scrub is not None:
        text, guard = scrub.secrets_only(text), scrub.cut_tail
    if complete and len(text) <= max_chars:
        return text
    over = "" if complete else "over "
    keep = max_chars
    while True:  # as in cap(): the marker's length depends on the count it reports
        marker = f"\n[... {over}{len(text) - keep} more characters of JSON cut]"
        fitted = max_chars - len(marker)
        if fitted < 0:
            marker, fitted = "", max_chars
        if fitted == keep or not marker:
            kept = text[:fitted]
            return (kept if guard is None else guard(kept, fitted)) + marker
        keep = fitted


def render(value: Any) -> str:
    """The text form of an observation, for a model's context."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
