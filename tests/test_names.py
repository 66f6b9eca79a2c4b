"""Invariant 1, default deny: names match exactly, and nothing else ever runs a tool."""

from __future__ import annotations

import enum
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.testing import MemoryStore

P = corral.Policy.from_dict

ALLOWED = "kb.read"
# Registered by code, never allowed: every near miss of the allowed name that is itself a
# valid tool name, so that a lookup that folded or trimmed anything would find one of them.
NEIGHBOURS = [
    "kb.read2",
    "kb.rea",
    "kb_read",
    "kbread",
    "kb.read.admin",
    "xkb.read",
    "kb-read",
    "kb..read",
    "admin.delete",
]


def policy(*allowed: str, **tools: Any) -> corral.Policy:
    return P({"tools": {"allow": list(allowed), **tools}, "writes": {"require_approval": False}})


# -- examples -----------------------------------------------------------------------------


def test_a_tool_not_in_the_allowlist_is_denied_and_never_runs(probe, store):
    """Registered but not allowed: ``tool_denied:browser.open``, why ``not_allowed``."""
    browser = probe("browser.open")
    search = probe("search.read")
    with corral.Run(policy("search.read"), tools=[browser.tool, search.tool], store=store) as run:
        run.call("browser.open", {"q": "https://vendor.example/status"})
    stop = run.result.stop
    assert str(stop) == "tool_denied:browser.open"
    assert (stop.tool, stop.extra["why"], stop.retryable) == ("browser.open", "not_allowed", False)
    assert browser.count == 0


def test_an_empty_policy_allows_nothing(probe, store):
    """With ``{}`` every registered tool is denied."""
    tools = [probe(name) for name in ("kb.read", "kb.write", "http.get")]
    for t in tools:
        with corral.Run(P({}), tools=[x.tool for x in tools], store=store) as run:
            run.call(t.tool.name, {"q": "x"})
        assert run.result.stop_reason == "tool_denied"
    assert [t.count for t in tools] == [0, 0, 0]


def test_an_invented_name_is_handed_back_listing_the_tools_on_offer(probe, store):
    """A name no code registered is a ``ToolRejected`` naming the tools the model may use."""
    search = probe("search.read")
    hidden = probe("admin.delete")
    tools = [search.tool, hidden.tool]
    with (
        corral.Run(policy("search.read"), tools=tools, store=store) as run,
        pytest.raises(corral.ToolRejected) as rejected,
    ):
        run.call("search.web", {"q": "x"})
    assert rejected.value.reason == "tool_denied"
    assert rejected.value.detail == "unknown_tool"
    assert "search.read" in rejected.value.message
    assert "admin.delete" not in rejected.value.message  # not on offer, not advertised


def test_invented_names_stop_the_run_after_max_invalid_args(store):
    """After ``max_invalid_args`` hand-backs, the next invented name stops the run."""
    with corral.Run(policy(max_invalid_args=2), store=store) as run:
        for _ in range(2):
            with pytest.raises(corral.ToolRejected):
                run.call("made.up", {})
        with pytest.raises(corral.Stop) as stop:
            run.call("made.up", {})
    assert str(stop.value) == "tool_denied:made.up (unknown_tool)"
    assert stop.value.info.extra["why"] == "unknown_tool"
    assert run.result.stop_reason == "tool_denied"


def test_max_invalid_args_zero_stops_at_the_first_invented_name(store):
    """``max_invalid_args: 0`` hands nothing back."""
    with corral.Run(policy(max_invalid_args=0), store=store) as run:
        run.call("made.up", {})
    assert str(run.result.stop) == "tool_denied:made.up (unknown_tool)"


def test_invented_names_and_invalid_arguments_share_one_count(probe, store):
    """Both kinds of model mistake count against the same ``max_invalid_args``."""
    search = probe("search.read")
    with corral.Run(
        policy("search.read", max_invalid_args=2), tools=[search.tool], store=store
    ) as run:
        with pytest.raises(corral.ToolRejected):
            run.call("made.up", {})
        with pytest.raises(corral.ToolRejected):
            run.call("search.read", {"query": "x"})
        run.call("made.up", {})
    assert run.result.stop_reason == "tool_denied"


def test_an_allowed_tool_no_code_registered_is_an_unknown_tool(store):
    """Allowed in the policy, registered by nobody: a warning at start, then ``unknown_tool``."""
    with (
        corral.Run(policy("orphan.get"), store=store) as run,
        pytest.raises(corral.ToolRejected) as rejected,
    ):
        run.call("orphan.get", {"url": "x"})
    assert rejected.value.detail == "unknown_tool"
    warnings = [e.data for e in store.events(run.id) if e.kind == "warning"]
    assert [w["tool"] for w in warnings] == ["orphan.get"]


def test_tell_model_hands_a_denial_back_and_the_run_goes_on(probe, store):
    """``on_denied: tell_model``: a ``ToolRejected`` saying why; other tools still work."""
    browser = probe("browser.open")
    search = probe("search.read")
    with corral.Run(
        policy("search.read", on_denied="tell_model"),
        tools=[browser.tool, search.tool],
        store=store,
    ) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("browser.open", {"q": "x"})
        assert (rejected.value.reason, rejected.value.detail) == ("tool_denied", "not_allowed")
        assert "search.read" in rejected.value.message
        assert run.call("search.read", {"q": "x"}) == "ok"
    assert run.result.status == "ok"
    assert browser.count == 0
    assert run.result.usage.tool_calls == 1


def test_denials_handed_back_are_bounded(probe, store):
    """A model that keeps calling a denied tool is stopped after ``max_invalid_args``."""
    browser = probe("browser.open")
    with corral.Run(
        policy(on_denied="tell_model", max_invalid_args=3), tools=[browser.tool], store=store
    ) as run:
        for _ in range(10):
            try:
                run.call("browser.open", {"q": "x"})
            except corral.ToolRejected:
                continue
    assert str(run.result.stop) == "tool_denied:browser.open"
    assert browser.count == 0


def test_an_unhandled_rejection_stops_the_run_with_the_same_stop_as_a_denial(probe, store):
    """A ``ToolRejected`` leaving the block reads like the gateway's own stop."""
    browser = probe("browser.open")
    with corral.Run(policy(on_denied="tell_model"), tools=[browser.tool], store=store) as run:
        run.call("browser.open", {"q": "x"})
    stop = run.result.stop
    assert str(stop) == "tool_denied:browser.open"
    assert (stop.tool, stop.extra["why"]) == ("browser.open", "not_allowed")


def test_a_huge_invented_name_is_quoted_back_cut_short(store):
    """A model-chosen name is data: it is shown back cut to a readable length."""
    name = "x" * 10_000
    with corral.Run(policy(), store=store) as run, pytest.raises(corral.ToolRejected) as rejected:
        run.call(name, {})
    assert len(rejected.value.message) < 300


def test_the_stricter_effect_wins_when_code_and_policy_disagree(store):
    """Code says read, policy says write: it is a write (it needs approval)."""
    sent = []

    @corral.tool(name="mail.read", effect="read")
    def mail(q: str) -> str:
        sent.append(q)
        return "ok"

    strict = P({"tools": {"allow": ["mail.read"], "specs": {"mail.read": {"effect": "write"}}}})
    with pytest.raises(corral.ConfigError, match=r"mail\.read"):
        corral.Run(strict, tools=[mail], store=store)
    with corral.Run(strict, tools=[mail], store=store, approver=lambda r: False) as run:
        run.call("mail.read", {"q": "x"})
    assert run.result.stop_reason == "approval_denied"
    assert sent == []


def test_a_policy_cannot_relax_a_write_declared_in_code(store):
    """Code says write, policy says read: it stays a write."""

    @corral.tool(name="mail.send", effect="write")
    def mail(q: str) -> str:
        return "sent"

    lax = P({"tools": {"allow": ["mail.send"], "specs": {"mail.send": {"effect": "read"}}}})
    with pytest.raises(corral.ConfigError, match=r"mail\.send"):
        corral.Run(lax, tools=[mail], store=store)


class _Shifty(str):
    """A str whose hash and equality lie: it looks like one name to one lookup and another
    name to the next."""

    hashes = 0

    def __hash__(self) -> int:
        _Shifty.hashes += 1
        return hash("admin.delete" if _Shifty.hashes % 2 else ALLOWED)

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False


class ToolName(enum.StrEnum):
    ADMIN = "admin.delete"
    KB = ALLOWED


def test_a_str_subclass_with_a_lying_hash_cannot_reach_a_denied_tool(probe, store):
    """The gateway looks up a plain copy of a name's text, not the object it was given."""
    admin = probe("admin.delete", effect="write")
    kb = probe(ALLOWED)
    with corral.Run(policy(ALLOWED), tools=[admin.tool, kb.tool], store=store) as run:
        run.call(_Shifty("something.else"), {"q": "x"})
    assert admin.count == 0 and kb.count == 0
    assert run.result.stop_reason == "tool_denied"


def test_str_enum_names_are_their_value(probe, store):
    """A ``str`` enum member names the tool its value names, for better and for worse."""
    admin = probe("admin.delete", effect="write")
    kb = probe(ALLOWED)
    with corral.Run(policy(ALLOWED), tools=[admin.tool, kb.tool], store=store) as run:
        assert run.call(ToolName.KB, {"q": "x"}) == "ok"
        run.call(ToolName.ADMIN, {"q": "x"})
    assert (kb.count, admin.count) == (1, 0)
    assert str(run.result.stop) == "tool_denied:admin.delete"


# -- the property: no variant of a name ever runs a tool it does not name exactly ----------

CONFUSABLES = {
    "a": ["а", "ɑ", "ａ", "α"],
    "e": ["е", "ｅ", "ė"],
    "o": ["о", "ο", "ｏ", "0"],
    "r": ["г", "ｒ"],
    "d": ["ԁ", "ｄ"],
    "k": ["κ", "к", "ｋ", "K"],
    "b": ["Ь", "ｂ", "ḅ"],
    ".": ["․", "．", "。", "\u2024", "·", "٫"],
    "_": ["＿", "‗"],
    "-": ["‐", "−", "－"],
}
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"]
SPACES = [" ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2028", "\x00", "\x0b"]


@st.composite
def variant(draw: Any) -> Any:
    """A name near one of the registered names (or not a name at all)."""
    base = draw(st.sampled_from([ALLOWED, *NEIGHBOURS]))
    kind = draw(
        st.sampled_from(
            ["case", "confusable", "invisible", "space", "affix", "normal", "text", "nonstr"]
        )
    )
    if kind == "case":
        flags = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
        return "".join(c.upper() if f else c for c, f in zip(base, flags, strict=True))
    if kind == "confusable":
        spots = [i for i, c in enumerate(base) if c in CONFUSABLES]
        i = draw(st.sampled_from(spots))
        return base[:i] + draw(st.sampled_from(CONFUSABLES[base[i]])) + base[i + 1 :]
    if kind == "invisible":
        i = draw(st.integers(0, len(base)))
        return base[:i] + draw(st.sampled_from(INVISIBLE)) + base[i:]
    if kind == "space":
        pad = draw(st.sampled_from(SPACES))
        return draw(st.sampled_from([pad + base, base + pad, pad + base + pad]))
    if kind == "affix":
        before = draw(st.text(max_size=3))
        after = draw(st.text(max_size=3))
        return before + base + after
    if kind == "normal":
        form = draw(st.sampled_from(["NFD", "NFKD"]))
        return unicodedata.normalize(form, base.upper() if draw(st.booleans()) else base)
    if kind == "text":
        return draw(st.text(max_size=20))
    return draw(
        st.sampled_from(
            [
                None,
                0,
                123,
                1.5,
                True,
                b"kb.read",
                bytearray(b"kb.read"),
                [ALLOWED],
                (ALLOWED,),
                {"name": ALLOWED},
                {ALLOWED},
                object(),
                ToolName.ADMIN,
            ]
        )
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=variant(), tell=st.booleans())
def test_no_name_variant_ever_runs_a_tool_it_does_not_name_exactly(probe, name: Any, tell: bool):
    """Only the exact allowed name runs the allowed tool; nothing runs a denied one."""
    probes = {n: probe(n) for n in [ALLOWED, *NEIGHBOURS]}
    run_policy = policy(ALLOWED, on_denied="tell_model" if tell else "stop")
    with corral.Run(
        run_policy, tools=[p.tool for p in probes.values()], store=MemoryStore()
    ) as run:
        try:
            run.call(name, {"q": "x"})
        except corral.ToolRejected as rejected:
            assert rejected.reason == "tool_denied"
    exact = (type(name) is str and name == ALLOWED) or name is ToolName.KB
    assert probes[ALLOWED].count == (1 if exact else 0)
    assert all(probes[n].count == 0 for n in NEIGHBOURS)
    if not exact:
        assert run.result.stop_reason in ("ok", "tool_denied")
