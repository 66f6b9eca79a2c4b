"""Lock files: tool definitions pinned by digest, beside a policy.

One format for both kinds of pins: the MCP proxy's (``corral mcp pin`` writes
``POLICY.mcp-lock.json``) and in-process tools' (``corral check --pin`` writes
``POLICY.tools-lock.json``)::

    {"version": 2, "tools": {"ledger.notes": {"digest": "<sha256>", "definition": {...}}}}

The definition is kept so that a change can be shown as a diff (``corral mcp diff``).
Version 1 files (``{"version": 1, "tools": {"name": "<sha256>"}}``, digests alone) are
still read; they are written as version 2 from then on. A file is written whole or not
at all (a temporary file renamed over it).

Imports nothing of corral but the exceptions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.exceptions import ConfigError

__all__ = ["LOCK_VERSION", "Pinned", "digests", "read_pins", "write_pins"]

LOCK_VERSION = 2
_READS = (1, 2)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A tool's pin: the digest of its definition, and the definition when kept."""

    digest: str
    definition: Mapping[str, Any] | None = None


def _is_digest(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def read_pins(path: Path, *, hint: str = "corral mcp pin") -> dict[str, Pinned]:
    """The pins of the lock file at ``path``; a file that is not one is a ConfigError
    (``hint``: the command that writes one, for the message)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no lock file at {path}: write one with `{hint}`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the lock file {path} cannot be read: {exc}") from None
    version = data.get("version") if isinstance(data, dict) else None
    tools = data.get("tools") if isinstance(data, dict) else None
    if version not in _READS:
        raise ConfigError(f"{path} is not a corral lock file (version {LOCK_VERSION})")
    if not isinstance(tools, dict):
        raise ConfigError(f"{path}: 'tools' must map tool names to their pins")
    out: dict[str, Pinned] = {}
    for name, pin in tools.items():
        if version == 1 and _is_digest(pin):
            out[name] = Pinned(pin)
        elif (
            version == 2
            and isinstance(pin, dict)
            and _is_digest(pin.get("digest"))
            and isinstance(pin.get("definition"), dict | None)
        ):
            out[name] = Pinned(pin["digest"], pin.get("definition"))
        else:
            raise ConfigError(
                f"{path}: the pin of {name!r} must be "
                + ("a SHA-256 digest" if version == 1 else '{"digest": SHA-256, "definition": {}}')
            )
    return out


def digests(pins: Mapping[str, Pinned]) -> dict[str, str]:
    """Each tool's pinned digest."""
    return {name: pin.digest for name, pin in pins.items()}


def write_pins(path: Path, pins: Mapping[str, Pinned]) -> None:
    """Write ``pins`` to ``path`` (version 2) whole or not at all."""
    tools = {
        name: {"digest": pin.digest, "definition": pin.definition}
        for name, pin in sorted(pins.items())
    }
    body = json.dumps({"version": LOCK_VERSION, "tools": tools}, indent=2, sort_keys=True)
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(body + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
