"""Constraints on list items (``items``, ``max_items``) and on email addresses (``domains``):
``mail.send(to, cc)`` limited to a company's domains, whatever trick the model tries."""

from __future__ import annotations

import email.policy
import email.utils
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.testing import MemoryStore

DOMAINS = ["example.com", "*.example.com"]


class Mailer:
    """``mail.send(to, cc)``, recording what it really sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

        @corral.tool(name="mail.send", effect="write")
        def send(to: str = "boss@example.com", cc: list[str] | None = None) -> str:
            self.sent.append((to, cc))
            return "sent"

        self.tool = send


def mail_policy(constraints: dict[str, Any], **tools: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["mail.send"],
                **tools,
                "specs": {"mail.send": {"constraints": constraints}},
            },
            "writes": {"require_approval": False},
        }
    )


def send(policy: corral.Policy, args: dict[str, Any]) -> tuple[bool, corral.RunResult]:
    """One ``mail.send`` call: (whether it was sent, the run's result)."""
    mailer = Mailer()
    with corral.Run(policy, tools=[mailer.tool], store=MemoryStore()) as run:
        run.call("mail.send", args)
    return bool(mailer.sent), run.result


TO = mail_policy({"to": {"domains": DOMAINS}})
CC = mail_policy({"cc": {"max_items": 3, "items": {"domains": DOMAINS}}})


# -- email domains ---------------------------------------------------------------------------

GOOD_ADDRESSES = [
    "ann@example.com",
    "Ann.Lee@EXAMPLE.COM",  # domains are case-insensitive
    "ann+tag@sales.example.com",
    "ann@deep.sales.example.com",
    "o'brien@example.com",
    "a{b}|c~d=e?f^g`h&i*j/k$l#m-n_o@example.com",  # every atext character but % and !
]

BAD_ADDRESSES = [
    ("ann@evil.com", "domain evil.com"),
    ("ann@example.com.evil.com", "domain example.com.evil.com"),
    ("ann@evilexample.com", "domain evilexample.com"),
    ("ann@example.co", "domain example.co"),
    ("ann@example.com.", "domain example.com."),
    ("ann@xn--exmple-cua.com", "domain xn--exmple-cua.com"),  # a punycode look-alike
    ("ann@exаmple.com", "not an ASCII address"),  # Cyrillic а
    ("ann＠evil.com@example.com", "not an ASCII address"),  # a fullwidth @
    ("ann@evil.com@example.com", "not one address"),
    ("ann@evil.com,bob@example.com", "not one address"),
    ("annexample.com", "not one address"),
    ("Ann <ann@evil.com>", "not a plain address"),
    ("ann@example.com <ann@evil.com>", "not one address"),
    ('"ann@evil.com"@example.com', "not one address"),
    ('"ann"@example.com', "not a plain address"),
    ("ann(x)@example.com", "not a plain address"),
    ("ann@example.com(comment)", "domain example.com(comment)"),
    ("ann@example.com (x)", "domain example.com (x)"),
    ("ann%evil.com@example.com", "not a plain address"),  # the percent hack
    ("evil.com!ann@example.com", "not a plain address"),  # a bang path
    ("@evil.com:ann@example.com", "not one address"),  # a source route
    (".ann@example.com", "not a plain address"),
    ("an..n@example.com", "not a plain address"),
    ("ann@[192.0.2.1]", "domain [192.0.2.1]"),
    ("ann@192.0.2.1", "domain 192.0.2.1"),
    ("ann@example..com", "domain example..com"),
    (" ann@example.com", "not a plain address"),
    ("ann@example.com\n", "domain example.com?"),
    ("ann@example.com\r\nBcc: x@evil.com", "not one address"),
    ("ann\x00@example.com", "not a plain address"),
    ("@example.com", "not a plain address"),
    ("ann@", "domain "),
    ("a" * 65 + "@example.com", "too long"),
    ("ann@" + "a" * 250 + ".example.com", "too long"),
    ("ann@example", "domain example"),
]


@pytest.mark.parametrize("address", GOOD_ADDRESSES)
def test_an_address_in_an_allowed_domain_is_sent(address):
    """A plain address whose domain is allowed (or a subdomain of a wildcard) is sent."""
    sent, result = send(TO, {"to": address})
    assert sent and result.stop_reason == "ok", result.stop


@pytest.mark.parametrize(("address", "note"), BAD_ADDRESSES)
def test_an_address_outside_the_domains_or_written_with_a_trick_is_denied(address, note):
    """Another domain, a look-alike, display names, quoted local parts, comments, routing
    tricks (``%``, ``!``, source routes), domain literals, header injection: denied with a
    one-line stop naming why, before anything is sent."""
    sent, result = send(TO, {"to": address})
    assert not sent
    stop = result.stop
    assert (stop.reason, stop.why, stop.extra["argument"]) == (
        "tool_denied",
        "argument_not_allowed",
        "to",
    )
    assert stop.extra["note"].startswith(note)
    assert str(stop) == f"tool_denied:mail.send (argument_not_allowed: {stop.extra['note']})"
    assert str(stop).isascii() and str(stop).isprintable()


def test_the_stop_names_the_refused_domain():
    """The stop reads as the issue asks: ``tool_denied:mail.send (argument_not_allowed:
    domain evil.com)``; the message tells the model which domains are not allowed."""
    _, result = send(TO, {"to": "ann@evil.com"})
    assert str(result.stop) == "tool_denied:mail.send (argument_not_allowed: domain evil.com)"
    assert result.stop.message == (
        "mail.send: argument 'to' has domain 'evil.com', which is not in the allowed domains"
    )


def test_a_domains_rule_on_something_that_is_not_text_denies_it():
    """``domains`` on a number or a list is a denial, not a skipped check."""
    policy = mail_policy({"cc": {"domains": DOMAINS}})
    sent, result = send(policy, {"cc": ["ann@example.com"]})
    assert not sent and result.stop.extra["note"] == "not an email address"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"domains": ["Example.com"]}, "did you mean 'example.com'?"),
        ({"domains": ["exämple.com"]}, "did you mean 'xn--exmple-cua.com'?"),
        ({"domains": ["ann@example.com"]}, "did you mean 'example.com'?"),
        ({"domains": ["192.0.2.1"]}, "mail domains are names, not an IP address"),
        ({"domains": DOMAINS, "hosts": DOMAINS}, "one argument cannot be both"),
        ({"items": {"domains": ["example.com."]}}, "items.domains"),
        ({"max_items": 0}, "max_items"),
        ({"items": {"colour": "red"}}, "items.colour"),
    ],
)
def test_a_domains_or_items_rule_that_cannot_work_is_refused_when_the_policy_loads(rule, problem):
    """Upper case, non-ASCII (the xn-- form suggested), addresses, IP addresses, a rule
    that is both URL and address, and unknown keys inside ``items``: the policy does not load."""
    with pytest.raises(corral.PolicyError) as raised:
        mail_policy({"to": rule})
    assert "tools.specs.mail.send.constraints.to" in str(raised.value)
    assert problem in str(raised.value)


# -- list items ------------------------------------------------------------------------------


def test_every_item_of_a_list_argument_is_judged():
    """``items`` applies the same constraint to each item; the stop names the first bad one."""
    assert send(CC, {"cc": ["a@example.com", "b@sales.example.com"]})[0]
    assert send(CC, {"cc": []})[0]
    sent, result = send(CC, {"cc": ["a@example.com", "b@evil.com", "c@evil.org"]})
    assert not sent
    assert str(result.stop) == "tool_denied:mail.send (argument_not_allowed: domain evil.com)"
    assert "argument 'cc' item 1 has domain 'evil.com'" in result.stop.message


def test_max_items_caps_a_list():
    """``max_items`` refuses a longer list."""
    sent, result = send(CC, {"cc": [f"u{i}@example.com" for i in range(4)]})
    assert not sent
    assert result.stop.message == "mail.send: argument 'cc' must have at most 3 items, got 4"
    assert result.stop.extra["note"] == "too many items"


def test_an_items_rule_on_something_that_is_not_a_list_denies_it():
    """``items`` on a string (a list the model flattened into text) is a denial."""
    policy = mail_policy({"to": {"items": {"domains": DOMAINS}}})
    sent, result = send(policy, {"to": "a@example.com"})
    assert not sent and result.stop.extra["note"] == "not a list"


@pytest.mark.parametrize(
    ("items", "value", "ok"),
    [
        ({"enum": ["low", "high"]}, ["low", "high", "low"], True),
        ({"enum": ["low", "high"]}, ["low", "urgent"], False),
        ({"pattern": "[A-Z]{3}-[0-9]+"}, ["ABC-1", "XYZ-22"], True),
        ({"pattern": "[A-Z]{3}-[0-9]+"}, ["ABC-1", "abc-1"], False),
        ({"max_length": 3}, ["abc", "de"], True),
        ({"max_length": 3}, ["abcd"], False),
        ({"min": 0, "max": 10}, [0, 10, 5.5], True),
        ({"min": 0, "max": 10}, [0, 11], False),
        ({"hosts": ["*.example.com"]}, ["https://a.example.com/x", "b.example.com"], True),
        ({"hosts": ["*.example.com"]}, ["https://a.example.com@evil.com/"], False),
        ({"items": {"enum": [1, 2]}}, [[1, 2], [2]], True),  # a list of lists
        ({"items": {"enum": [1, 2]}}, [[1], [1, 3]], False),
    ],
)
def test_items_take_every_kind_of_constraint(items, value, ok):
    """``items`` takes the same keys as any constraint: enum, pattern, max_length, ranges,
    hosts, and ``items`` again for a list of lists."""
    got: list[Any] = []

    @corral.tool(name="tags.read", effect="read")
    def tags(values: list[Any]) -> str:
        got.append(values)
        return "ok"

    policy = corral.Policy.from_dict(
        {
            "tools": {
                "allow": ["tags.read"],
                "specs": {"tags.read": {"constraints": {"values": {"items": items}}}},
            }
        }
    )
    with corral.Run(policy, tools=[tags], store=MemoryStore()) as run:
        run.call("tags.read", {"values": value})
    assert bool(got) is ok, run.result.stop
    if not ok:
        assert run.result.stop.why == "argument_not_allowed"


def test_an_items_denial_can_be_handed_back_to_the_model():
    """With ``on_denied: tell_model`` the model hears which item was refused and may fix it."""
    mailer = Mailer()
    policy = mail_policy({"cc": {"items": {"domains": DOMAINS}}}, on_denied="tell_model")
    with corral.Run(policy, tools=[mailer.tool], store=MemoryStore()) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("mail.send", {"cc": ["a@example.com", "leak@evil.com"]})
        assert "item 1 has domain 'evil.com'" in rejected.value.message
        assert run.call("mail.send", {"cc": ["a@example.com"]}) == "sent"
    assert mailer.sent == [("boss@example.com", ["a@example.com"])]


# -- properties ------------------------------------------------------------------------------

_LOCALS = ["ann", "a.b", "x+y", '"ann"', '"a@evil.com"', "ann(c)", "(c)ann", "a%evil.com",
           "evil.com!a", "", ".a", "a.", "a..b", "Ann Lee", "ü", "a\\@b", "<ann"]  # fmt: skip
_ATS = ["@", "@", "@", "＠", "@@", "", " @ "]
_DOMAINS = ["example.com", "EXAMPLE.com", "sales.example.com", "example.com.", "evil.com",
            "example.com.evil.com", "evilexample.com", "xn--exmple-cua.com", "exаmple.com",
            "[192.0.2.1]", "example.com>", "example.com (x)", "example.com, b@evil.com",
            "evil.com>, <c@example.com", "example..com", "", "example.com\r\nBcc: e@evil.com",
            "example.com\x00.evil.com", "evil.com:a@example.com"]  # fmt: skip
_AROUND = ["", "", "Ann <", "<", " ", '"Ann" <', "a@evil.com, ", "=?utf-8?q?x?= <"]


def _part(choices: list[str], benign: int) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(choices[:benign]), st.sampled_from(choices))


@st.composite
def addresses(draw: st.DrawFn) -> str:
    """An address assembled from hostile parts, sometimes wrapped in a display name."""
    before = draw(_part(_AROUND, 2))
    body = draw(_part(_LOCALS, 3)) + draw(_part(_ATS, 3)) + draw(_part(_DOMAINS, 3))
    after = ">" if before.endswith("<") and draw(st.booleans()) else ""
    return before + body + after


def _allowed(domain: str) -> bool:
    """The test's own reading of DOMAINS: example.com or any subdomain of it."""
    domain = domain.lower()
    return domain == "example.com" or (domain.endswith(".example.com") and domain != ".example.com")


def library_domains(value: str) -> tuple[int, set[str]]:
    """How many addresses, and which domains, Python's mail libraries read in ``value``: the
    header parser of ``email.policy.default`` and ``email.utils``' parseaddr/getaddresses."""
    header = email.policy.default.header_factory("To", value)
    count = len(header.addresses)
    domains = {a.domain for a in header.addresses}
    pairs = [email.utils.parseaddr(value), *email.utils.getaddresses([value])]
    count = max(count, len(pairs) - 1)
    domains |= {addr.rpartition("@")[2] for _, addr in pairs}
    return count, domains


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(address=addresses())
def test_an_allowed_address_is_one_address_in_an_allowed_domain_to_every_mail_library(address):
    """Random addresses from hostile parts (display names, quoted local parts, comments,
    fullwidth and double @, lists, CRLF, NUL, look-alikes): whenever one is allowed, the
    mail libraries read exactly one address, whose domain is allowed."""
    sent, result = send(TO, {"to": address})
    if not sent:
        assert result.stop.why == "argument_not_allowed"
        return
    count, domains = library_domains(address)
    assert count == 1, address
    assert domains and all(_allowed(d) for d in domains), (address, domains)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipients=st.lists(addresses(), max_size=5))
def test_a_list_is_sent_only_when_every_item_is_allowed(recipients):
    """Random lists of random addresses: sent exactly when there are at most three and each
    one alone would be allowed."""
    each = [send(TO, {"to": r})[0] for r in recipients]
    sent, _ = send(CC, {"cc": recipients})
    assert sent == (len(recipients) <= 3 and all(each))


def test_the_policy_reference_example_loads_and_means_what_it_says():
    """The YAML under "Argument constraints" in docs/policy.md loads, and denies what the
    text says it denies."""
    doc = (Path(__file__).parent.parent / "docs" / "policy.md").read_text(encoding="utf-8")
    section = doc.split("### Argument constraints", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy = corral.Policy.from_yaml(example)
    policy = corral.Policy.from_dict(
        {**policy.model_dump(exclude_unset=True), "writes": {"require_approval": False}}
    )
    assert send(policy, {"to": "ann@sales.example.com", "cc": ["bob@example.com"]})[0]
    _, result = send(policy, {"cc": ["bob@sales.example.com"]})  # cc: example.com only
    assert str(result.stop) == (
        "tool_denied:mail.send (argument_not_allowed: domain sales.example.com)"
    )
