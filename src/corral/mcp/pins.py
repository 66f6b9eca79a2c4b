"""Pinned tool definitions: the rug-pull defence.

An MCP server can change a tool after it was reviewed: the description that told the model
what the tool does, its schema, its annotations. Each tool the policy allows is pinned to
the digest of its definition (:func:`corral.mcp.definitions.digest`):

- with a **lock file** (``corral mcp pin`` writes it: JSON, ``{"version": 1, "tools":
  {"time.get_current_time": "<sha256>", ...}}``), to the digests recorded there; a tool the
  lock does not name is not pinned, so it is hidden and denied too (a renamed tool is a new,
  unapproved tool);
- without one, to the definition first seen by this proxy (trust on first use, for the
  proxy's lifetime).

A tool whose definition no longer matches is hidden from ``tools/list`` and its calls are
denied (``tool_denied``, why ``definition_changed``), until the lock is written again by an
operator who has seen the change (``corral mcp pin``).

Imports nothing of corral but the exceptions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from corral.exceptions import ConfigError

__all__ = ["LOCK_VERSION", "Change", "Pins", "read_lock", "write_lock"]

LOCK_VERSION = 1


@dataclass(frozen=True, slots=True)
class Change:
    """A tool whose definition is not the pinned one: ``pinned`` is None for a tool the lock
    does not name."""

    name: str
    pinned: str | None
    seen: str


@dataclass
class Pins:
    """The digests tools are pinned to, and the changes seen."""

    locked: Mapping[str, str] | None = None  # from a lock file; None: trust on first use
    first_seen: dict[str, str] = field(default_factory=dict)
    changes: dict[str, Change] = field(default_factory=dict)

    def check(self, name: str, seen: str) -> Change | None:
        """Whether ``name``'s definition (digest ``seen``) may be offered: None when it
        matches its pin, else the change (remembered in :attr:`changes`)."""
        if self.locked is not None:
            pinned = self.locked.get(name)
        else:
            pinned = self.first_seen.setdefault(name, seen)
        if pinned == seen:
            return None
        change = Change(name, pinned, seen)
        self.changes[name] = change
        return change


def read_lock(path: Path) -> dict[str, str]:
    """The pins of the lock file at ``path``; a file that is not one is a ConfigError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no lock file at {path}: write one with `corral mcp pin`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the lock file {path} cannot be read: {exc}") from None
    tools = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("version") != LOCK_VERSION:
        raise ConfigError(f"{path} is not a corral MCP lock file (version {LOCK_VERSION})")
    if not isinstance(tools, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in tools.items()
    ):
        raise ConfigError(f"{path}: 'tools' must map tool names to SHA-256 digests")
    return dict(tools)


def write_lock(path: Path, pins: Mapping[str, str]) -> None:
    """Write ``pins`` to ``path`` whole or not at all (a temporary file renamed over it)."""
    body = json.dumps({"version": LOCK_VERSION, "tools": dict(sorted(pins.items()))}, indent=2)
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
