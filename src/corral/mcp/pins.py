"""Pinned tool definitions: the rug-pull defence.

An MCP server can change a tool after it was reviewed: the description that told the model
what the tool does, its schema, its annotations. Each tool the policy allows is pinned to
the digest of its definition (:func:`corral.mcp.definitions.digest`):

- with a **lock file** (``corral mcp pin`` writes it, :mod:`corral.policy.locks`: each
  tool's digest and definition), to the digests recorded there; a tool the lock does not
  name is not pinned, so it is hidden and denied too (a renamed tool is a new, unapproved
  tool);
- without one, to the definition first seen by this proxy (trust on first use, for the
  proxy's lifetime).

A tool whose definition no longer matches is hidden from ``tools/list`` and its calls are
denied (``tool_denied``, why ``definition_changed``); the proxy queues the change for an
operator (:mod:`corral.mcp.queue`). When the lock file changes on disk (``corral mcp
approve-definition`` or ``corral mcp pin`` wrote it), a running proxy reads it again at its
next listing or call (:meth:`Pins.reload`): no restart.

Imports the lock files' format and the exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.policy.locks import LOCK_VERSION, Pinned, digests, read_pins, write_pins

__all__ = ["LOCK_VERSION", "Change", "Pins", "read_lock", "write_lock"]


@dataclass(frozen=True, slots=True)
class Change:
    """A tool whose definition is not the pinned one: ``pinned`` is None for a tool the lock
    does not name; ``pinned_definition`` the definition pinned, when known."""

    name: str
    pinned: str | None
    seen: str
    pinned_definition: Mapping[str, Any] | None = None


@dataclass
class Pins:
    """The digests tools are pinned to, and the changes seen.

    ``path``: the lock file, watched (read again when it changes; a proxy started before
    it existed trusts first sight until it appears)."""

    locked: Mapping[str, str] | None = None  # from a lock file; None: trust on first use
    path: Path | None = None
    definitions: dict[str, Mapping[str, Any] | None] = field(default_factory=dict)
    first_seen: dict[str, str] = field(default_factory=dict)
    changes: dict[str, Change] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None

    @classmethod
    def from_lock(cls, path: Path) -> Pins:
        """The pins of the lock file at ``path`` (none yet when it is missing), watched."""
        pins = cls(path=path)
        pins.reload()
        return pins

    def reload(self) -> bool:
        """Read the lock file again if it changed since last read; whether it did."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        pinned = read_pins(self.path)
        self._stamp = stamp
        self.locked = digests(pinned)
        self.definitions = {name: pin.definition for name, pin in pinned.items()}
        return True

    def check(
        self, name: str, seen: str, definition: Mapping[str, Any] | None = None
    ) -> Change | None:
        """Whether ``name``'s definition (digest ``seen``) may be offered: None when it
        matches its pin, else the change (remembered in :attr:`changes`)."""
        if self.locked is not None:
            pinned = self.locked.get(name)
        else:
            pinned = self.first_seen.setdefault(name, seen)
            if pinned == seen and name not in self.definitions:
                self.definitions[name] = definition
        if pinned == seen:
            self.changes.pop(name, None)
            return None
        change = Change(name, pinned, seen, self.definitions.get(name) if pinned else None)
        self.changes[name] = change
        return change


def read_lock(path: Path) -> dict[str, str]:
    """The digests of the lock file at ``path``; a file that is not one is a ConfigError."""
    return digests(read_pins(path))


def write_lock(path: Path, pins: Mapping[str, str | Pinned]) -> None:
    """Write ``pins`` (digests, or digests with definitions) to ``path`` whole or not at all."""
    write_pins(path, {n: p if isinstance(p, Pinned) else Pinned(p) for n, p in pins.items()})
