"""The queue of tool-definition changes an operator reviews.

When the proxy sees an allowed tool whose definition is not its pin (:mod:`corral.mcp.pins`),
it queues the change in the store (:class:`~corral.stores.base.DefinitionStore`) once per
tool and new digest, with an audit record (kind ``tool_definition``, action ``changed``,
run id ``-``): the tool, the digest it was pinned to and the new one, the new definition and
the pinned one when the lock kept it, when and by which proxy (``host:pid``) it was first
seen. ``corral mcp diff`` shows each pending change as a unified diff; ``corral mcp
approve-definition`` writes the new pin to the lock file and marks the change ``approved``,
``corral mcp reject-definition`` marks it ``rejected`` (the tool stays hidden); each decision
is audited (action ``approved`` / ``rejected``, the operator as actor, the reason).

Imports the stores' records and the kill switch's fleet run id; not the ``mcp`` SDK.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from corral.controls.killswitch import FLEET_RUN_ID
from corral.stores.base import DefinitionChange, DefinitionStatus, DefinitionStore, Event

__all__ = ["AUDIT_KIND", "QueueError", "audit_event", "decide", "diff", "pending", "queue"]

#: The kind of the audit records of the queue.
AUDIT_KIND = "tool_definition"


class QueueError(Exception):
    """No such pending change, or more than one: the message says which and how to pick."""


def seen_by() -> str:
    """This process, as the queue names who saw a change: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def queue(
    store: DefinitionStore,
    *,
    name: str,
    server: str,
    tool: str,
    pinned: str | None,
    digest: str,
    definition: Mapping[str, Any],
    pinned_definition: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> bool:
    """Queue a change (with its audit record) unless it is queued already; whether it was."""
    change = DefinitionChange(
        name=name,
        server=server,
        tool=tool,
        pinned=pinned,
        digest=digest,
        definition=dict(definition),
        pinned_definition=None if pinned_definition is None else dict(pinned_definition),
        first_seen=time.time() if now is None else now,
        seen_by=seen_by(),
    )
    return store.queue_definition_change(
        change, audit=audit_event("changed", change, change.seen_by)
    )


def pending(
    store: DefinitionStore, *, server: str | None = None, tool: str | None = None
) -> list[DefinitionChange]:
    """The pending changes, of ``server`` and of ``tool`` (``SERVER.TOOL`` or the server's
    own name for it) when given, oldest first."""
    out = []
    for change in store.definition_changes(status="pending"):
        if server is not None and change.server != server:
            continue
        if tool is not None and tool not in (change.name, change.tool):
            continue
        out.append(change)
    return out


def decide(
    store: DefinitionStore,
    name: str,
    *,
    status: DefinitionStatus,
    by: str,
    digest: str | None = None,
    reason: str = "",
) -> DefinitionChange:
    """Approve or reject the pending change of ``name`` (to ``digest``: needed when several
    are pending); the decided change. Raises :class:`QueueError` when none or several
    match."""
    found = store.definition_changes(status="pending", name=name)
    if digest is not None:
        found = [c for c in found if c.digest == digest or c.digest.startswith(digest)]
    if not found:
        which = f" to {digest}" if digest else ""
        raise QueueError(f"no pending change of {name}{which} (corral mcp diff lists them)")
    if len(found) > 1:
        digests = ", ".join(c.digest[:16] for c in found)
        raise QueueError(
            f"{name} has {len(found)} pending changes ({digests}): pick one with --digest"
        )
    change = found[0]
    decided_at = time.time()
    after = replace(change, status=status, decided_at=decided_at, decided_by=by, reason=reason)
    done = store.decide_definition_change(
        name,
        change.digest,
        status=status,
        at=decided_at,
        by=by,
        reason=reason,
        audit=audit_event(status, after, by),
    )
    if done is None:  # another operator decided it first
        raise QueueError(f"the change of {name} to {change.digest[:16]} is no longer pending")
    return done


def audit_event(action: str, change: DefinitionChange, actor: str) -> Event:
    """The audit record of a change seen (``changed``) or decided (``approved``,
    ``rejected``): run id ``-``, kind ``tool_definition``; ``data`` names the tool, its
    server, the pinned and new digests, and the decision's reason."""
    data: dict[str, Any] = {
        "action": action,
        "name": change.name,
        "server": change.server,
        "tool": change.tool,
        "pinned": change.pinned,
        "digest": change.digest,
    }
    if action != "changed":
        data["reason"] = change.reason or ""
    return Event(
        run_id=FLEET_RUN_ID,
        seq=0,
        kind=AUDIT_KIND,
        at=time.time(),
        data=data,
        actor=actor,
    )


def pretty(definition: Mapping[str, Any] | None) -> list[str]:
    """A definition as canonical pretty JSON lines (sorted keys, two spaces)."""
    if definition is None:
        return []
    text = json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False)
    return [line + "\n" for line in text.splitlines()]


def diff(change: DefinitionChange) -> str:
    """A unified diff of the pinned definition and the new one (the whole new definition
    when no pinned one is known: a new or renamed tool, or a version 1 lock)."""
    before = pretty(change.pinned_definition)
    old = (
        f"{change.name} pinned {change.pinned[:16]}"
        if change.pinned
        else f"{change.name} (not pinned)"
    )
    if change.pinned and change.pinned_definition is None:
        old += " (definition not kept: pinned by an older lock file)"
    lines = difflib.unified_diff(
        before,
        pretty(change.definition),
        fromfile=old,
        tofile=f"{change.name} {change.digest[:16]}",
    )
    return "".join(lines)
