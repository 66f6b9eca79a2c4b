"""Every snippet in README.md and docs/*.md runs as written.

- ```python and ```py blocks run in file order, one namespace per document, in a fresh
  working directory whose default store (``CORRAL_DB``) is a new SQLite file. A line
  ``print(...)  # expected`` states what it prints: the output must say exactly that.
- ```sh, ```shell and ```console blocks run their ``corral`` commands (``$ corral ...``
  in a console block; other lines there are output) against that store, which a small
  governed run creates first; each must exit 0. A command with a placeholder
  (``<run-id>``, ``ID``, ``apr_...``) cannot run as written and is reported as not run.
  Any other program in such a block (``make``, ``pip``) needs the block marked.
- ```yaml blocks are policies: each must load.
- A block preceded by ``<!-- no-test: why -->`` (needs an API key, the network, minutes of
  work) is not run; each one is reported as a skipped test with its reason, so nothing is
  left out silently. Output samples (```json, ```text, bare fences) are not code.
- docs/migration.md is walked by tests/test_migration.py, which writes its
  ``<!-- file: NAME -->`` blocks and runs its ``<!-- run -->`` commands, comparing their
  output: blocks under those markers are left to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import shlex
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.record import metrics, sinks, tracing
from corral.testing import ScriptedModel, final

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

PYTHON = {"python", "py"}
SHELL = {"sh", "shell", "bash", "console"}
YAML = {"yaml", "yml"}

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_NO_TEST = re.compile(r"^\s*<!--\s*no-test:\s*(?P<why>.*?)\s*-->\s*$")
#: The markers of the page tests/test_migration.py walks (its MARKER), and that page.
_WALKED = re.compile(r"^<!-- (file: \S+|run|start|finish|runs table) -->$")
WALKED_PAGE = "docs/migration.md"
_EXPECTED = re.compile(r"^\s*print\(.*\)\s+#\s?(?P<out>.*)$")
_PLACEHOLDER = re.compile(r"^<[^>]+>$|\.\.\.|…|^[A-Z][A-Z_]+$")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    lang: str
    code: str
    skip: str | None
    walked: bool = False

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, with the no-test reason of each marked one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, lang = opened.group(1), opened.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        marked = _NO_TEST.match(before)
        why = marked.group("why") if marked else None
        rel = str(path.relative_to(ROOT))
        walked = bool(_WALKED.match(before.strip()))
        out.append(Block(rel, start + 1, lang, "\n".join(body) + "\n", why, walked))
    return out


FOUND = [b for doc in DOCUMENTS for b in blocks(doc)]
ALL = [b for b in FOUND if not b.walked]  # the walked page's blocks are test_migration's
SKIPPED = [b for b in ALL if b.skip is not None]


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A working directory of its own, a new default store, the environment restored and
    corral's process-wide exporters switched off afterwards; yields the store's URL."""
    url = f"sqlite:///{tmp_path}/corral.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORRAL_DB", url)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    saved = dict(os.environ)
    root, corral_log = logging.getLogger(), logging.getLogger("corral")
    handlers, levels = list(root.handlers), (root.level, corral_log.level)
    installed = list(sinks.SINKS)
    yield url
    os.environ.clear()
    os.environ.update(saved)
    root.handlers[:] = handlers  # a snippet may configure logging (basicConfig)
    root.setLevel(levels[0])
    corral_log.setLevel(levels[1])
    metrics.disable()
    tracing.disable()
    for sink in list(sinks.SINKS):
        if sink not in installed:  # a snippet's exporter, not one the suite had on
            sinks.remove_sink(sink)
    _close_left_loop()


def _close_left_loop() -> None:
    """Close the event loop a snippet left as the thread's current one: a framework's sync
    entry point (Pydantic AI's ``run_sync``) sets one and keeps it for the next call, as a
    script wants; left here, it would be collected during a later test, its sockets unclosed."""
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            left = policy.get_event_loop()
        except RuntimeError:  # none, and none may be made here
            return
    if not left.is_running():
        left.close()
        policy.set_event_loop(None)


# -- Python ------------------------------------------------------------------------------
def _docs_with(langs: set[str]) -> list[str]:
    return sorted({b.doc for b in ALL if b.lang in langs and b.skip is None})


@pytest.mark.parametrize("doc", _docs_with(PYTHON))
def test_python_snippets_run_as_written(doc: str, sandbox: str) -> None:
    """The document's Python blocks run in order in one namespace, and each commented
    print prints what its comment says."""
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in (b for b in ALL if b.doc == doc and b.lang in PYTHON and b.skip is None):
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(block.code, block.where, "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"{block.where}: {type(exc).__name__}: {exc}") from exc
        expected = [
            m.group("out").rstrip()
            for line in block.code.splitlines()
            if (m := _EXPECTED.match(line))
        ]
        if expected:
            shown = [line.rstrip() for line in printed.getvalue().splitlines()]
            assert shown == expected, f"{block.where} printed {shown}, the comments say {expected}"


# -- shell -------------------------------------------------------------------------------
def commands(block: Block) -> list[str]:
    """The command lines of a shell block (continuations joined, prompts stripped)."""
    out: list[str] = []
    pending = ""
    for raw in block.code.splitlines():
        line = raw.rstrip()
        if block.lang == "console":
            if not (line.startswith("$ ") or pending):
                continue  # output
            line = line[2:] if line.startswith("$ ") else line
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.strip() and not line.lstrip().startswith("#"):
            out.append(line.strip())
    return out


def _seed(url: str) -> None:
    """Create the store with one finished run, as a user who ran an agent would have."""
    corral.run("seed", model=ScriptedModel([final("done")]), policy=corral.Policy.from_dict({}))
    assert corral.open_store(url) is not None


def argv(line: str) -> list[str]:
    """A command line's words as a shell would pass them (comments dropped, ``~`` and
    ``$VARS`` expanded)."""
    return [os.path.expanduser(os.path.expandvars(a)) for a in shlex.split(line, True)]


def has_placeholder(words: list[str]) -> bool:
    """Whether a command holds a placeholder (``<run-id>``, ``ID``, ``apr_...``)."""
    return any(_PLACEHOLDER.search(w) for w in words[1:] if not w.startswith("-"))


SHELL_BLOCKS = [b for b in ALL if b.lang in SHELL and b.skip is None]
PLACEHOLDERS = [
    (b, line) for b in SHELL_BLOCKS for line in commands(b) if has_placeholder(argv(line))
]


@pytest.mark.parametrize("doc", _docs_with(SHELL))
def test_shell_snippets_run_as_written(doc: str, sandbox: str) -> None:
    """Each ``corral`` command of the document's shell blocks exits 0 against a store that
    an agent created (commands with placeholders are reported apart, never run)."""
    _seed(sandbox)
    runner = CliRunner()
    for block in (b for b in SHELL_BLOCKS if b.doc == doc):
        for line in commands(block):
            words = argv(line)
            assert words[0] == "corral", (
                f"{block.where}: {words[0]!r} is not a corral command; mark the block "
                "<!-- no-test: why --> if it cannot run in the test suite"
            )
            if has_placeholder(words):
                continue
            result = runner.invoke(app, words[1:])
            assert result.exit_code == 0, (
                f"{block.where}: `{line}` exited {result.exit_code}:\n{result.output}"
            )


@pytest.mark.parametrize(
    ("block", "line"),
    PLACEHOLDERS or [(None, "")],
    ids=[b.where if b else "none" for b, _ in PLACEHOLDERS or [(None, "")]],
)
def test_shell_commands_with_placeholders(block: Block | None, line: str) -> None:
    """A command with a placeholder cannot run as written: each is reported as skipped."""
    if block is None:
        return
    pytest.skip(f"{block.where}: not run, it has a placeholder: {shlex.join(argv(line))}")


# -- YAML --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "block", [b for b in ALL if b.lang in YAML and b.skip is None], ids=lambda b: b.where
)
def test_yaml_snippets_are_valid_policies(block: Block) -> None:
    """Every YAML block in the docs is a policy that loads."""
    corral.Policy.from_yaml(block.code, source=block.where)


# -- marked blocks -----------------------------------------------------------------------
@pytest.mark.parametrize("block", SKIPPED or [None], ids=lambda b: b.where if b else "none")
def test_blocks_marked_no_test(block: Block | None) -> None:
    """Each block marked ``no-test`` is reported as skipped, with its reason."""
    if block is None:
        return
    assert block.skip, f"{block.where}: a no-test marker needs a reason"
    assert block.lang in PYTHON | SHELL | YAML, f"{block.where}: only code blocks are marked"
    pytest.skip(f"{block.where} ({block.lang}) not run: {block.skip}")


def test_blocks_left_to_the_migration_walk_are_on_the_page_it_walks() -> None:
    """Only docs/migration.md is walked by tests/test_migration.py: its markers anywhere
    else would leave a block run by nobody."""
    walked = {b.doc for b in FOUND if b.walked}
    assert walked <= {WALKED_PAGE}, f"walk markers outside {WALKED_PAGE}: {walked}"


def test_the_docs_have_snippets_to_run() -> None:
    """The extraction finds the blocks (a broken parser would pass everything)."""
    python = [b for b in ALL if b.lang in PYTHON]
    assert len(python) >= 10 and any(b.doc == "README.md" for b in python)
    assert any(b.lang in SHELL for b in ALL) and any(b.lang in YAML for b in ALL)
