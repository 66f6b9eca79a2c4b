"""docs/cli.md keeps up with the command line: every command and subcommand has a section
naming each of its options, and the README links the page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clitree import commands, options

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def sections() -> dict[str, str]:
    """The text under each ``### `corral ...``` heading, by the command it names."""
    found: dict[str, str] = {}
    parts = re.split(r"^### `(corral[^`]*)`\s*$", DOC, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[heading] = body
    return found


@pytest.mark.parametrize("path", sorted(commands()), ids=" ".join)
def test_every_command_has_a_section_naming_its_options(path: tuple[str, ...]) -> None:
    """``### `corral PATH``` exists and mentions every long option of the command (``--help``
    aside) and its exit codes."""
    name = "corral " + " ".join(path)
    body = sections().get(name)
    assert body is not None, f"docs/cli.md has no section for {name}"
    missing = [o for o in sorted(options(commands()[path])) if f"{o}" not in body]
    assert not missing, f"{name}: options not in docs/cli.md: {missing}"
    if path != ("version",):
        assert "Exit codes" in body or "exit codes as for" in body, name


def test_every_section_is_a_command() -> None:
    """No section documents a command the command line does not have."""
    known = {"corral " + " ".join(p) for p in commands()} | {"corral --version"}
    assert set(sections()) <= known


def test_the_readme_links_the_command_line_page() -> None:
    """README's "Read next" lists docs/cli.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    read_next = readme.split("## Read next", 1)[1]
    assert "(docs/cli.md)" in read_next
