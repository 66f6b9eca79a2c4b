"""The queue of tool-definition changes on every backend (in memory, SQLite, PostgreSQL):
a change is queued once per tool and digest with one audit record, decided from pending
only (a second decision changes nothing and records nothing), and the chain verifies."""

from __future__ import annotations

from corral.mcp.queue import QueueError, decide, pending, queue
from corral.record.audit import records, verify
from corral.stores import Store
from corral.stores.base import DefinitionStore

NEW = {"name": "notes", "description": "Changed.", "inputSchema": {"type": "object"}}
OLD = {"name": "notes", "description": "Read the notes.", "inputSchema": {"type": "object"}}


def _queue(store: Store, digest: str, at: float) -> bool:
    return queue(store, name="ledger.notes", server="ledger", tool="notes", pinned="a" * 64,
                 digest=digest, definition=NEW, pinned_definition=OLD, now=at)  # fmt: skip


def test_a_change_is_queued_once_and_decided_once(store: Store) -> None:
    assert isinstance(store, DefinitionStore)
    assert _queue(store, "b" * 64, 10.0)
    assert not _queue(store, "b" * 64, 11.0)  # seen again, by this or another proxy
    assert _queue(store, "c" * 64, 12.0)  # changed once more: a change of its own
    [first, _] = pending(store, tool="notes")
    assert (first.digest, first.first_seen, first.definition) == ("b" * 64, 10.0, NEW)
    assert first.pinned_definition == OLD and first.status == "pending" and first.seen_by
    assert pending(store, server="other") == []
    try:
        decide(store, "ledger.notes", status="approved", by="ann")
    except QueueError as exc:
        assert "2 pending changes" in str(exc) and "--digest" in str(exc)
    else:
        raise AssertionError("two pending changes need --digest")
    done = decide(store, "ledger.notes", status="rejected", by="ann", digest="b" * 8,
                  reason="no")  # fmt: skip
    assert (done.status, done.decided_by, done.reason) == ("rejected", "ann", "no")
    assert done.decided_at is not None
    again = store.decide_definition_change(
        "ledger.notes", "b" * 64, status="approved", at=1.0, by="bob"
    )
    assert again is None  # decided already: from pending only
    assert [c.digest for c in pending(store)] == ["c" * 64]
    assert [c.status for c in store.definition_changes(status=None)] == ["rejected", "pending"]
    audited = [r for r in records(store) if r.kind == "tool_definition"]
    assert [r.data["action"] for r in audited] == ["changed", "changed", "rejected"]
    assert audited[2].actor == "ann" and audited[2].data["reason"] == "no"
    assert verify(store).ok
