"""URL constraints on values written without a scheme (``docs.example.com/page``) and on
hostile URLs: a value is allowed only when every host a client could take it to name
(urllib, httpx, the URL standard as browsers implement it, as written or completed by an
address bar) is on the allowed list."""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import urlsplit

import ada_url
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.testing import MemoryStore

ALLOWED = ["docs.example.com", "*.good.example"]


def policy(rule: dict[str, Any]) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": ["http.get"], "specs": {"http.get": {"constraints": {"url": rule}}}}}
    )


def judge(rule: dict[str, Any], url: Any) -> tuple[bool, corral.RunResult, list[Any]]:
    """Call ``http.get(url)`` once under ``rule``: (ran, the run's result, what the tool got)."""
    got: list[Any] = []

    @corral.tool(name="http.get", effect="read")
    def get(url: str) -> str:
        got.append(url)
        return "page"

    with corral.Run(policy(rule), tools=[get], store=MemoryStore()) as run:
        run.call("http.get", {"url": url})
    return bool(got), run.result, got


# -- scheme-less URLs and bare hosts ----------------------------------------------------------

SCHEMELESS_ALLOWED = [
    "docs.example.com",
    "docs.example.com/page",
    "DOCS.example.com/page?q=1#top",
    "docs.example.com.",
    "docs.example.com:8443",
    "docs.example.com:8443/x",
    "a.good.example/search?q=@evil.example",  # '@' after the host is part of the query
    "b.a.good.example/x@evil.example",  # ... or of the path
    "a.good.example#@evil.example",
]

SCHEMELESS_DENIED = [
    ("evil.example", "not in the allowed hosts"),
    ("evil.example/docs.example.com", "not in the allowed hosts"),
    ("good.example/x", "not in the allowed hosts"),  # *.good.example: subdomains only
    ("docs.example.com.evil.example/", "not in the allowed hosts"),
    ("evil.example@docs.example.com", "credentials"),
    ("docs.example.com@evil.example", "credentials"),
    ("evil.example:443@docs.example.com", "no host"),  # a scheme 'evil.example', no host
    ("docs.example.com:443@evil.example", "no host"),
    ("docs.example.com:@evil.example", "no host"),
    ("docs.example.com%40evil.example", "ASCII"),
    ("docs.example.com%2eevil.example", "ASCII"),
    ("docs.example.com\\@evil.example", "backslash"),
    ("evil.example\\docs.example.com", "backslash"),
    ("//evil.example/x", "protocol-relative"),
    ("//docs.example.com/x", "protocol-relative"),
    ("/docs.example.com", "no host"),
    ("dоcs.example.com", "ASCII"),  # Cyrillic о
    ("docs。example.com", "ASCII"),
    ("xn--dcs-5cd.example.com", "not in the allowed hosts"),
    ("docs.example.com ", "spaces"),
    ("\tdocs.example.com", "spaces"),
    ("docs.example.com\n.evil.example", "spaces"),
    ("[::1]/x", "ASCII"),
    ("127.1/x", "ASCII"),  # a non-canonical IPv4 address
    ("0x7f.0.0.1/x", "ASCII"),
    ("2130706433/x", "ASCII"),
    ("https:evil.example", "no host"),  # browsers read https:host as https://host
    ("https:/docs.example.com", "no host"),
    ("https:443", "no host"),
    ("javascript:alert(1)", "no host"),
    ("mailto:someone@docs.example.com", "no host"),
    ("docs.example.com:99999", "not a valid URL"),
    ("docs.example.com:0", "port 0"),
    ("", "no host"),
]


@pytest.mark.parametrize("url", SCHEMELESS_ALLOWED)
def test_a_url_without_a_scheme_on_an_allowed_host_runs_with_its_value_unchanged(url):
    """``docs.example.com/page`` is read as https://docs.example.com/page: an allowed host
    runs, and the tool gets the value as the model sent it."""
    ran, result, got = judge({"hosts": ALLOWED}, url)
    assert ran and result.stop_reason == "ok", result.stop
    assert got == [url]


@pytest.mark.parametrize(("url", "why"), SCHEMELESS_DENIED)
def test_a_hostile_url_without_a_scheme_is_denied(url, why):
    """Userinfo, ``host:port@host``, backslashes, percent-encoding, look-alikes, ``//host``,
    whitespace, numeric hosts and scheme-only URLs: denied, with the reason in the message."""
    ran, result, _ = judge({"hosts": ALLOWED}, url)
    assert not ran
    assert result.stop.why == "argument_not_allowed"
    assert why in result.stop.message
    assert str(result.stop).isascii() and str(result.stop).isprintable()


def test_a_url_without_a_scheme_passes_a_schemes_rule_only_when_it_allows_https():
    """A scheme-less URL counts as https: allowed by ``schemes: [https]``, denied by
    ``schemes: [http]`` with a message saying why."""
    assert judge({"schemes": ["https"], "hosts": ALLOWED}, "docs.example.com/x")[0]
    assert judge({"schemes": ["https"]}, "anywhere.example/x")[0]
    ran, result, _ = judge({"schemes": ["http"], "hosts": ALLOWED}, "docs.example.com/x")
    assert not ran
    assert "has no scheme (it would be read as https)" in result.stop.message
    assert str(result.stop) == "tool_denied:http.get (argument_not_allowed: no scheme)"


def test_a_bare_host_argument_can_be_limited_with_hosts():
    """An argument that is a host name alone (a DNS lookup, say) is judged by ``hosts``."""
    assert judge({"hosts": ["*.good.example"]}, "api.good.example")[0]
    ran, result, _ = judge({"hosts": ["*.good.example"]}, "api.good.example.evil.example")
    assert not ran
    assert str(result.stop) == (
        "tool_denied:http.get (argument_not_allowed: host api.good.example.evil.example)"
    )


@pytest.mark.parametrize(
    ("hosts", "problem"),
    [
        (["Docs.Example.com"], "did you mean 'docs.example.com'?"),
        (["bücher.example"], "did you mean 'xn--bcher-kva.example'?"),
        (["docs..example.com"], "not a plain ASCII host name"),
        (["https://docs.example.com/"], "did you mean 'docs.example.com'?"),
        (["*.*.example.com"], "not a plain ASCII host name"),
        (["127.1"], "not an IPv4 address in dotted form"),
        (["*.192.0.2.1"], "a wildcard cannot cover an IP address"),
    ],
)
def test_allowed_hosts_that_no_url_could_match_are_refused_when_the_policy_loads(hosts, problem):
    """An allowed host in the wrong case, non-ASCII, with an empty label or a path, or a
    number no browser reads as written, would never match: the policy does not load."""
    with pytest.raises(corral.PolicyError) as raised:
        policy({"hosts": hosts})
    assert "tools.specs.http.get.constraints.url.hosts" in str(raised.value)
    assert problem in str(raised.value)


def test_a_canonical_ipv4_address_can_be_allowed():
    """``192.0.2.1`` in ``hosts`` allows that address written canonically, and no other form."""
    assert judge({"hosts": ["192.0.2.1"]}, "https://192.0.2.1/x")[0]
    assert judge({"hosts": ["192.0.2.1"]}, "192.0.2.1:8080")[0]
    assert not judge({"hosts": ["192.0.2.1"]}, "https://3221225985/x")[0]
    assert not judge({"hosts": ["192.0.2.1"]}, "https://192.0.2.01/x")[0]


# -- property: hostile URLs built from parts ------------------------------------------------

_SCHEMES = ["", "https://", "http://", "HTTPS://", "//", "https:", "https:/", "https:///",
            "javascript:", "ftp://", "ws://", "https:\\\\", " https://", "\thttps://"]  # fmt: skip
_USERINFO = ["", "user@", "user:pw@", "@", ":@", "docs.example.com@", "evil.example@",
             "evil.example:443@", "a.good.example:80@", "docs.example.com%40", "x\\@"]  # fmt: skip
_HOSTS = ["docs.example.com", "DOCS.Example.COM", "docs.example.com.", "docs.example.com..",
          "a.good.example", "deep.a.good.example", "good.example", "evil.example",
          "docs.example.com.evil.example", "evilgood.example", "xn--dcs-5cd.example.com",
          "dоcs.example.com", "docs。example.com", "docs%2eexample.com", "docs.example.com%00",
          "127.0.0.1", "0x7f.1", "2130706433", "[::1]", "", "a..good.example", ".good.example",
          "docs.example.com\u200b", "ａ.good.example", "docs.example.com\\",
          "evil.example#"]  # fmt: skip
_PORTS = ["", ":443", ":", ":0", ":99999", ":8443", ":+1", ":80@evil.example",
          ":443\\@evil.example", ":@evil.example"]  # fmt: skip
_PATHS = ["", "/", "/page", "/@evil.example", "?q=@evil.example", "#@evil.example",
          "\\evil.example", "/..%2f@evil.example", "//evil.example", " /x", "%2f@evil.example",
          "\r\n.evil.example", "@evil.example", "/\\evil.example", ".evil.example"]  # fmt: skip
_NOISE = st.text(alphabet="@:/\\?#%.[] \t\x00-_.~aZ0", max_size=3)


def _part(choices: list[str], benign: int) -> st.SearchStrategy[str]:
    """One of ``choices``, its first ``benign`` ones about half of the time: most URLs
    then have one or two hostile parts, and some are allowed."""
    return st.one_of(st.sampled_from(choices[:benign]), st.sampled_from(choices))


@st.composite
def hostile_urls(draw: st.DrawFn) -> str:
    """A URL assembled from hostile parts, sometimes with a little noise inserted."""
    parts = [
        draw(_part(_SCHEMES, 4)),
        draw(_part(_USERINFO, 1)),
        draw(_part(_HOSTS, 6)),
        draw(_part(_PORTS, 2)),
        draw(_part(_PATHS, 7)),
    ]
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(_NOISE))
    return "".join(parts)


def _allowed(host: str) -> bool:
    """The test's own reading of ALLOWED: an exact name or a proper subdomain."""
    return host == "docs.example.com" or (
        host.endswith(".good.example") and host != ".good.example"
    )


def client_hosts(value: str) -> set[str]:
    """Every host urllib, httpx or the URL standard (ada, as browsers parse) reads
    ``value`` as naming, as written and, when it has no ``scheme://``, as an address bar
    completes it (``https://`` + value). Lower case, one trailing dot dropped."""
    forms = [value]
    if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        forms.append("https://" + value)
    found: set[str] = set()
    for form in forms:
        with contextlib.suppress(ValueError):  # each refuses what it cannot parse
            found.add(urlsplit(form).hostname or "")
        with contextlib.suppress(Exception):
            found.add(httpx.URL(form).raw_host.decode("ascii", "replace"))
        with contextlib.suppress(ValueError):
            found.add(ada_url.URL(form).hostname)
    hosts = {h.lower() for h in found if h}
    return {h[:-1] if h.endswith(".") else h for h in hosts}


def _scheme(value: str) -> str:
    written = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", value)
    return written.group(1).lower() if written else "https"


RULES = [
    {"hosts": ALLOWED},
    {"schemes": ["https"], "hosts": ALLOWED},
    {"schemes": ["http", "https"], "hosts": ALLOWED},
    {"schemes": ["http"], "hosts": ALLOWED},
]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=hostile_urls(), rule=st.sampled_from(RULES))
def test_an_allowed_url_names_only_allowed_hosts_to_every_client(url, rule):
    """Random URLs from hostile parts (userinfo, host:port@host, backslashes, look-alikes,
    percent-encoding, //host, whitespace, control characters, numeric hosts): whenever one
    is allowed, urllib, httpx and the URL standard (as written, or completed with https://)
    all read it as naming a host on the list, and its scheme is an allowed one."""
    ran, result, _ = judge(rule, url)
    if not ran:
        assert result.stop.why == "argument_not_allowed"
        return
    hosts = client_hosts(url)
    assert hosts, url
    assert all(_allowed(h) for h in hosts), (url, hosts)
    if "schemes" in rule:
        assert _scheme(url) in rule["schemes"], url


@settings(max_examples=300, deadline=None)
@given(
    host=st.sampled_from(["docs.example.com", "a.good.example", "x.y.good.example"]),
    port=st.sampled_from(["", ":443", ":8443"]),
    path=st.text(alphabet="abc/?#=&@:%.-_~", max_size=12).filter(
        lambda p: p == "" or p[0] in "/?#"
    ),
    scheme=st.sampled_from(["", "https://", "HTTPS://"]),
)
def test_well_formed_urls_on_allowed_hosts_run(host, port, path, scheme):
    """The other side: a well-formed URL on an allowed host, with or without its scheme,
    any port and any path, query or fragment, is allowed."""
    ran, result, _ = judge({"schemes": ["https"], "hosts": ALLOWED}, scheme + host + port + path)
    assert ran, result.stop
