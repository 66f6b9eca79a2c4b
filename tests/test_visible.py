"""Hostile text shown to operators is shown, never acted on: a task, an answer, an agent's
name, an approval's arguments and purpose, a stop's message, a kill switch's reason —
written by a model or a caller, holding terminal escapes (clear the screen, move the
cursor over what an approver reads, plant a hyperlink), carriage returns, bidirectional
overrides (``1000`` shown as ``0001``) or zero-width characters — reaches the terminal
through every command, text and JSON, and the browser through every dashboard page, with
each such character written as its escape, and with everything else still there."""

from __future__ import annotations

import contextlib
import json
import re
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

import corral
from corral._visible import acts, visible
from corral.cli.app import app
from corral.controls import killswitch
from corral.stores.base import ApprovalRecord, KillSwitchState
from corral.stores.sqlite import SQLiteStore

#: Everything a terminal or a browser acts on, one of each kind.
HOSTILE = (
    "\x1b[2J\x1b[H"  # clear the screen, cursor home
    "\x1b[1A\x1b[2K"  # up a line, erase it (over what was shown)
    "\r"  # back to the start of the line
    "\x1b]8;;http://evil.example\x1b\\click\x1b]8;;\x1b\\"  # an OSC 8 hyperlink
    "\x1b]0;owned\x07"  # the window title, BEL
    "\x08\x08"  # backspaces
    "\x9b31m"  # a C1 control sequence introducer
    "\u202e0001\u202c"  # right-to-left override: 1000 shown as 0001
    "\u2066x\u2069"  # an isolate
    "a\u200bb\u200dc\ufeff"  # zero-width space, joiner, byte order mark
    "\u2028"  # a line separator
    "[bold red]markup[/] [link=http://evil.example]x[/link]"  # rich markup, shown as text
)


def _acting(text: str) -> list[str]:
    """The characters of ``text`` that act (newlines and tabs are fine)."""
    return sorted({c for c in text if acts(c)})


# -- the function -------------------------------------------------------------------------
@given(st.text())
def test_visible_text_has_nothing_that_acts_and_is_idempotent(text: str) -> None:
    shown = visible(text)
    assert _acting(shown) == []
    assert visible(shown) == shown
    assert visible(text, newlines=False).count("\n") == 0


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_visible_keeps_every_other_character(text: str) -> None:
    shown = visible(text)
    kept = [c for c in text if not acts(c)]
    assert "".join(c for c in shown if c in kept) != "" or kept == []
    for c in kept:
        assert c in shown


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
def test_visible_json_is_the_same_json(value: Any) -> None:
    """JSON text made visible is valid JSON meaning the same value (escapes as JSON's)."""
    for text in (json.dumps(value, ensure_ascii=False), json.dumps(value, indent=2)):
        shown = visible(text)
        assert _acting(shown) == []
        assert json.loads(shown) == value


def test_what_acts_is_what_a_terminal_or_a_browser_acts_on() -> None:
    for c in "\x1b\x07\x08\r\x00\x7f\x85\x9b\u202e\u2066\u200b\u200e\ufeff\u2028\u2029":
        assert acts(c), repr(c)
    for c in ("a", "Z", "0", "é", "中", "😀", "\n", "\t", "—", "✓", "·", "[", "<", "&", " "):
        assert not acts(c), repr(c)
    # Every other format character is left alone (soft hyphens, emoji joiners in sequences
    # are shown by terminals as the sequence they make).
    assert visible("👩\u200d💻") == "👩\\u200d💻"
    assert unicodedata.category("\u00ad") == "Cf" and not acts("\u00ad")


# -- the commands -------------------------------------------------------------------------
@pytest.fixture
def hostile_db(tmp_path: Path) -> Iterator[str]:
    """A store whose every text field a model or a caller can write holds :data:`HOSTILE`."""
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read"]}, "budgets": {"max_tool_calls": 1}}
    )
    read = corral.tool(lambda q: f"read {q}", name="kb.read", effect="read")
    with corral.Run(
        policy, tools=[read], store=store, run_id="run_hostile", agent=f"bot{HOSTILE}",
        tenant="acme", task=f"task {HOSTILE}",
    ) as run:  # fmt: skip
        run.call("kb.read", {"q": HOSTILE})
        run.finish(f"answer {HOSTILE}")
    with (
        contextlib.suppress(corral.Stop),
        corral.Run(
            policy, tools=[read], store=store, run_id="run_stopped", agent=HOSTILE, tenant="acme"
        ) as stopped,
    ):
        stopped.call("kb.read", {"q": "a"})
        stopped.call("kb.read", {"q": HOSTILE})  # max_tool_calls: stopped
    now = time.time()
    store.create_approval(
        ApprovalRecord(
            id="apr_hostile",
            run_id="run_hostile",
            tool="refund.send",
            args_digest="d" * 64,
            arguments={"amount": f"\u202e0001\u202c{HOSTILE}", HOSTILE: [HOSTILE]},
            tenant="acme",
            agent=HOSTILE,
            created=now,
            expires=now + 600,
            context={"step": 3, "purpose": f"purpose {HOSTILE}", "call_id": HOSTILE},
        )
    )
    killswitch.enable(
        store, scope="tenant", target="acme", mode="disable_writes", reason=f"why {HOSTILE}",
        actor=f"ops{HOSTILE}",
    )  # fmt: skip
    assert isinstance(store.kill_switches()[0], KillSwitchState)
    store.close()
    yield f"sqlite:///{path}"


COMMANDS = (
    ["runs"],
    ["runs", "--json"],
    ["show", "run_hostile"],
    ["show", "run_hostile", "--json"],
    ["show", "run_stopped"],
    ["approvals", "list"],
    ["approvals", "list", "--json"],
    ["approvals", "show", "apr_hostile"],
    ["approvals", "show", "apr_hostile", "--json"],
    ["kill", "status"],
    ["kill", "status", "--json"],
    ["report", "--since", "1d"],
    ["report", "--since", "1d", "--json"],
    ["audit", "verify"],
)


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_shows_hostile_text_without_acting_on_it(
    words: list[str], hostile_db: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, [*words, "--db", hostile_db], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert _acting(out) == [], f"{' '.join(words)} printed {_acting(out)!r}"
    if "--json" in words:
        json.loads(re.sub(r"^store: .*$", "", out, flags=re.M))  # still JSON
    shown = visible(HOSTILE)
    if words[:2] in (["show", "run_hostile"], ["approvals", "show"]):
        # The escaped text is there to be read (the table may cut long cells elsewhere).
        assert "\\u001b[2J" in out and "\\u202e" in out, out
        assert shown[:20] in out or "\\u001b[2J\\u001b[H" in out


def test_the_approver_reads_the_amount_as_it_is(hostile_db: str) -> None:
    out = CliRunner().invoke(app, ["approvals", "show", "apr_hostile", "--db", hostile_db]).output
    assert "\\u202e0001\\u202c" in out  # not a right-to-left "1000"


# -- the dashboard ------------------------------------------------------------------------
def test_every_dashboard_page_shows_hostile_text_without_acting_on_it(hostile_db: str) -> None:
    pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")
    from serving import login, make_keys, serving

    store = SQLiteStore(hostile_db.removeprefix("sqlite:///"))
    try:
        with serving(store) as running:
            token = make_keys(store, {"root-viewer": (None, "admin")})["root-viewer"]
            with running.client() as http:
                login(http, token)
                for page in (
                    "/ui/runs",
                    "/ui/runs/rows",
                    "/ui/runs/run_hostile",
                    "/ui/runs/run_stopped",
                    "/ui/approvals",
                    "/ui/approvals/list",
                    "/ui/kill",
                    "/ui/charts",
                ):
                    html = http.get(page).text
                    assert _acting(html) == [], f"{page}: {_acting(html)!r}"
                approvals = http.get("/ui/approvals/list").text
                assert "\\u202e0001\\u202c" in approvals
    finally:
        store.close()


# -- the logs -----------------------------------------------------------------------------
def test_log_lines_show_hostile_text_without_acting_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    with caplog.at_level("INFO", logger="corral"), corral.Run(
        policy, store="memory://", agent=HOSTILE, tenant=f"t{HOSTILE}"
    ):  # fmt: skip
        pass
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("corral")]
    assert any("started" in line for line in lines)
    for line in lines:
        assert _acting(line) == [] and "\n" not in line, line
    assert any("\\u001b[2J" in line for line in lines)
