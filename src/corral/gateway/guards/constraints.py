"""Value constraints: whether one argument's value is within what the policy allows.

Values are judged strictly: anything a client could read two ways is refused rather
than guessed at.

URLs (``schemes``, ``hosts``): whitespace or control characters, backslashes, ``@``
in the authority (``good.example@evil.example``), non-ASCII or percent-encoded host
names, empty labels and non-canonical IPv4 forms are refused. A URL without a scheme
(``docs.example.com/page``, ``docs.example.com:8443``) is read as a browser's address
bar reads it, as ``https://`` followed by the value, so it is allowed only when
``schemes`` is not set or lists ``https``; a protocol-relative ``//host`` (its scheme
depends on the page it is met on) is refused.

Email addresses (``domains``): exactly one ``@``, a dot-atom local part of ASCII
letters, digits and ``#$&'*+/=?^_`{|}~-`` (not ``%`` nor ``!``: the old routing tricks
``user%evil.example@good.example`` and ``evil.example!user@good.example``), an ASCII
domain; no display name, no quoted local part, no comment, no domain literal.
A domain matches like a host, case-insensitively.

Lists (``items``, ``max_items``): ``items`` is a constraint every item must meet.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urlsplit

from corral._safe import shown
from corral.gateway.guards.denial import one_line
from corral.policy import hostnames as _hostnames
from corral.policy.patterns import MAX_MATCH_CHARS
from corral.policy.schema import ArgConstraint

#: The scheme a URL written without one is read with (a browser's address bar).
DEFAULT_SCHEME = "https"

_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
# After "name:", a port (and the end or a path): "docs.example.com:8443/x" has no scheme.
_PORT_THEN_PATH = re.compile(r"[0-9]+(?:[/?#]|\Z)")
# Schemes whose URLs browsers read with a host even without "//" ("https:evil.example").
_SPECIAL = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_ATOM = r"[A-Za-z0-9#$&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
MAX_LOCAL, MAX_ADDRESS = 64, 254


class Violation(NamedTuple):
    """Why a value breaks a constraint: the full ``message`` (for the model and the log)
    and a short ``note`` for the stop's one-line text (``host evil.com``)."""

    message: str
    note: str


def violation(value: Any, rule: ArgConstraint) -> Violation | None:
    """Why ``value`` breaks ``rule``, or ``None``."""
    if rule.enum is not None and not _in_enum(value, rule.enum):
        return Violation(
            f"must be one of {shown(rule.enum, 200)}, got {shown(value)}", "not an allowed value"
        )
    if rule.min is not None or rule.max is not None:
        if not _number(value) or (isinstance(value, float | Decimal) and not math.isfinite(value)):
            return Violation(f"must be a finite number, got {shown(value)}", "not a finite number")
        if rule.min is not None and value < rule.min:
            return Violation(f"must be >= {rule.min:g}, got {shown(value)}", "below the minimum")
        if rule.max is not None and value > rule.max:
            return Violation(f"must be <= {rule.max:g}, got {shown(value)}", "above the maximum")
    if rule.max_length is not None:
        if not isinstance(value, str | list | tuple | dict):
            return Violation(
                f"must be a string or a list, got {type(value).__name__}", "not a string or list"
            )
        if len(value) > rule.max_length:
            return Violation(
                f"must be at most {rule.max_length} long, got {len(value)}", "too long"
            )
    if rule.pattern is not None:
        found = _pattern_problem(value, rule.pattern)
        if found is not None:
            return found
    if rule.schemes is not None or rule.hosts is not None:
        found = _url_problem(value, rule)
        if found is not None:
            return found
    if rule.domains is not None:
        found = _address_problem(value, rule.domains)
        if found is not None:
            return found
    if rule.items is not None or rule.max_items is not None:
        return _list_problem(value, rule)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _in_enum(value: Any, allowed: list[Any]) -> bool:
    # ``True == 1`` in Python; in an enumeration a boolean and a number are different values.
    return any(
        value == item and isinstance(value, bool) == isinstance(item, bool) for item in allowed
    )


def _pattern_problem(value: Any, pattern: str) -> Violation | None:
    if not isinstance(value, str):
        return Violation(
            f"must be a string matching {pattern!r}, got {type(value).__name__}",
            "does not match the pattern",
        )
    if len(value) > MAX_MATCH_CHARS:
        # Bounded input: a pattern's time grows with the text it runs on.
        return Violation(
            f"is {len(value)} characters, longer than a pattern is matched on ({MAX_MATCH_CHARS})",
            "too long to match",
        )
    if not re.fullmatch(pattern, value):
        return Violation(f"must match {pattern!r}", "does not match the pattern")
    return None


def _list_problem(value: Any, rule: ArgConstraint) -> Violation | None:
    if not isinstance(value, list | tuple | set | frozenset):
        return Violation(f"must be a list, got {type(value).__name__}", "not a list")
    if rule.max_items is not None and len(value) > rule.max_items:
        return Violation(
            f"must have at most {rule.max_items} items, got {len(value)}", "too many items"
        )
    if rule.items is not None:
        for index, item in enumerate(value):
            found = violation(item, rule.items)
            if found is not None:
                return Violation(f"item {index} {found.message}", found.note)
    return None


# -- URLs ------------------------------------------------------------------------------------


def _url_problem(value: Any, rule: ArgConstraint) -> Violation | None:
    if not isinstance(value, str):
        if type(value).__name__ not in ("Url", "AnyUrl", "HttpUrl", "AnyHttpUrl"):
            return Violation("must be a URL", "not a URL")
        value = str(value)  # a pydantic URL type: judge its text form
    if _UNSAFE.search(value):
        return Violation(
            "must not contain spaces, control characters or backslashes", "unsafe characters"
        )
    if value.startswith("//"):
        return Violation(
            "is protocol-relative (//host): its scheme depends on where it is used; "
            "write the scheme",
            "no scheme",
        )
    written = _has_scheme(value)
    try:
        parts = urlsplit(value if written else f"{DEFAULT_SCHEME}://{value}")
        port = parts.port
    except ValueError:
        return Violation("is not a valid URL", "invalid URL")
    if not written and rule.schemes is not None and DEFAULT_SCHEME not in rule.schemes:
        return Violation(
            f"has no scheme (it would be read as {DEFAULT_SCHEME}); "
            f"allowed: {', '.join(rule.schemes)}",
            "no scheme",
        )
    scheme = parts.scheme.lower()
    if rule.schemes is not None and scheme not in rule.schemes:
        return Violation(
            f"uses scheme {parts.scheme!r}; allowed: {', '.join(rule.schemes)}",
            f"scheme {one_line(parts.scheme)}",
        )
    if "@" in parts.netloc:
        return Violation("must not carry credentials (user@host)", "credentials in the URL")
    if rule.hosts is None:
        return None
    return _host_problem(parts, port, rule.hosts)


def _has_scheme(value: str) -> bool:
    """Whether ``value`` starts with a scheme, rather than with a host (and a port)."""
    found = _SCHEME.match(value)
    if found is None:
        return False
    rest = value[found.end() :]
    if rest.startswith("//") or found.group()[:-1].lower() in _SPECIAL:
        return True
    # "docs.example.com:8443/x" is a host and a port; "mailto:x", "javascript:..." and
    # "evil.example:443@good.example" have a scheme (and then no host: refused).
    return _PORT_THEN_PATH.match(rest) is None


def _host_problem(parts: SplitResult, port: int | None, allowed: list[str]) -> Violation | None:
    host = (parts.hostname or "").lower()
    host = host[:-1] if host.endswith(".") else host
    if not host:
        return Violation("has no host", "no host")
    if parts.netloc.startswith("[") or _hostnames.name_problem(host) is not None:
        return Violation(
            f"points to host {host!r}, which is not a plain ASCII host name",
            f"host {one_line(host)}",
        )
    if port == 0:
        return Violation("is not a valid URL (port 0)", "invalid URL")
    if not _hostnames.matches(host, allowed):
        return Violation(
            f"points to host {host!r}, which is not in the allowed hosts", f"host {one_line(host)}"
        )
    return None


# -- email addresses -------------------------------------------------------------------------


def _address_problem(value: Any, allowed: list[str]) -> Violation | None:
    if not isinstance(value, str):
        return Violation(
            f"must be an email address, got {type(value).__name__}", "not an email address"
        )
    if value.count("@") != 1:
        return Violation(
            "must be one plain address (local@domain, no display name or list)", "not one address"
        )
    local, domain = value.split("@")
    if not value.isascii():
        return Violation(
            "must be an ASCII address (an internationalised domain in its xn-- form)",
            "not an ASCII address",
        )
    if len(value) > MAX_ADDRESS or len(local) > MAX_LOCAL:
        return Violation(
            f"must be at most {MAX_ADDRESS} characters, {MAX_LOCAL} before the @", "too long"
        )
    if not _LOCAL.match(local):
        return Violation(
            "must be a plain address: letters, digits and .#$&'*+/=?^_`{|}~- before the @ "
            "(no quotes, comments, display name, % or !)",
            "not a plain address",
        )
    domain = domain.lower()
    if _hostnames.name_problem(domain) is not None or _hostnames.IPV4.match(domain):
        return Violation(
            f"has domain {domain!r}, which is not a plain ASCII domain name",
            f"domain {one_line(domain)}",
        )
    if not _hostnames.matches(domain, allowed):
        return Violation(
            f"has domain {domain!r}, which is not in the allowed domains",
            f"domain {one_line(domain)}",
        )
    return None
