"""Host and mail-domain names as the policy lists them, and how a name is matched.

One grammar for both sides: an entry of ``hosts`` or ``domains`` and the host a value
points to are lower-case ASCII labels of letters, digits, ``-`` and ``_`` (an
internationalised name in its ``xn--`` form), at most 253 characters. A name whose last
label is a number is an IPv4 address to browsers (``0x7f.1``, ``2130706433`` and
``127.1`` all mean ``127.0.0.1``), so it is accepted only in the canonical dotted form:
an exact match then means one address. An entry ``*.example.com`` matches proper
subdomains only (``a.example.com``, ``b.a.example.com``), never ``example.com`` itself.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
#: A host name as a client sends it: lower-case ASCII labels, no empty one.
NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")
# What the URL standard reads as a number: decimal digits, or 0x and hex digits.
_NUMBER = re.compile(r"(?:[0-9]+|0[x][0-9a-f]*)\Z")
MAX_NAME = 253


def name_problem(name: str) -> str | None:
    """Why ``name`` (lower case already) is not a plain host name, or ``None``."""
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    if not NAME.match(name):
        return "is not a plain ASCII host name"
    if _NUMBER.match(name.rsplit(".", 1)[-1]) and not IPV4.match(name):
        return "ends in a number but is not an IPv4 address in dotted form (such as 192.0.2.1)"
    return None


def entry_problem(entry: str, what: str) -> str | None:
    """Why a policy entry of ``hosts`` or ``domains`` (``what``) is not one, or ``None``."""
    bare = entry[2:] if entry.startswith("*.") else entry
    usage = f"{what} are lower-case names such as 'example.com' or '*.example.com'"
    if "/" in bare or "@" in bare:  # a URL or an address where a name belongs
        return f"{usage}, got {entry!r}{_name_hint(entry)}"
    if bare != bare.lower() or not bare.isascii():
        return f"{usage} (an internationalised one in its xn-- form), got {entry!r}" + _idna_hint(
            bare
        )
    problem = name_problem(bare)
    if problem is not None:
        return f"{usage}, got {entry!r}, which {problem}"
    if IPV4.match(bare) and (bare is not entry or what == "domains"):
        why = "a wildcard cannot cover" if bare is not entry else "mail domains are names, not"
        return f"{why} an IP address, got {entry!r}"
    return None


def _name_hint(entry: str) -> str:
    try:
        name = urlsplit(entry if "//" in entry else "//" + entry.rpartition("@")[2]).hostname
    except ValueError:
        return ""
    return f" (did you mean {name!r}?)" if name and name_problem(name) is None else ""


def _idna_hint(name: str) -> str:
    try:
        spelled = name.lower().encode("idna").decode("ascii")
    except UnicodeError:
        return ""
    return f" (did you mean {spelled!r}?)" if spelled != name else ""


def matches(name: str, allowed: list[str]) -> bool:
    """``name`` is an entry of ``allowed``, or a proper subdomain of a ``*.`` entry."""
    for entry in allowed:
        if entry.startswith("*."):
            if name.endswith(entry[1:]) and len(name) > len(entry) - 1:
                return True
        elif name == entry:
            return True
    return False
