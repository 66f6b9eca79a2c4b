"""The recordings concern on every backend (in memory, SQLite, PostgreSQL): saved and read
back, policy documents kept once per digest, pruning by when runs ended; and a run recorded
on each backend replays exactly."""

from __future__ import annotations

import corral
from corral.record.audit import verify
from corral.stores import Store
from corral.stores.base import RecordedRun, RecordingStore, RunRecord
from corral.testing import ScriptedModel, call, final


def _ended(store: Store, run_id: str, at: float) -> None:
    store.create_run(RunRecord(id=run_id, started_at=at - 1))
    store.update_run(run_id, status="ok", stop_reason="ok", ended_at=at)


def test_a_recording_is_saved_and_read_back(store: Store) -> None:
    """A recording comes back as saved; saving it again replaces it; the policy document
    is kept once per digest (the first one stays)."""
    assert isinstance(store, RecordingStore)
    body = {"format": 1, "steps": [{"kind": "tool", "output": "é ✓", "seconds": 0.25}]}
    first = RecordedRun(run_id="r1", digest="d1", policy_digest="p1", saved_at=10.0, bytes=99,
                        body=body)  # fmt: skip
    store.save_recording(first, policy={"tools": {"allow": ["a"]}})
    assert store.get_recording("r1") == first
    assert store.get_recording("missing") is None
    second = RecordedRun(run_id="r1", digest="d2", policy_digest="p1", saved_at=11.0, bytes=5,
                         body={"format": 1})  # fmt: skip
    store.save_recording(second, policy={"tools": {"allow": ["other"]}})
    assert store.get_recording("r1") == second
    assert store.policy_document("p1") == {"tools": {"allow": ["a"]}}
    assert store.policy_document("p2") is None


def test_prune_drops_the_bodies_of_runs_ended_before_the_cutoff(store: Store) -> None:
    """Only recordings of runs that ended before the cutoff lose their bodies (oldest first);
    a dry run changes nothing; digests stay; pruning again finds nothing."""
    for run_id, ended in (("old-1", 100.0), ("old-2", 200.0), ("new", 900.0)):
        _ended(store, run_id, ended)
        store.save_recording(
            RecordedRun(
                run_id=run_id,
                digest=f"d-{run_id}",
                policy_digest="p",
                saved_at=ended,
                bytes=3,
                body={"x": 1},
            )
        )
    store.create_run(RunRecord(id="running", started_at=1.0))
    store.save_recording(
        RecordedRun(run_id="running", digest="d", policy_digest="p", saved_at=1.0, body={})
    )
    assert store.prune_recordings(ended_before=500.0, now=1000.0, dry_run=True) == [
        "old-1",
        "old-2",
    ]
    assert all(store.get_recording(r).body is not None for r in ("old-1", "old-2"))  # type: ignore[union-attr]
    assert store.prune_recordings(ended_before=500.0, now=1000.0) == ["old-1", "old-2"]
    old = store.get_recording("old-1")
    assert old is not None and old.body is None and old.digest == "d-old-1"
    assert old.pruned_at == 1000.0
    kept = store.get_recording("new")
    assert kept is not None and kept.body == {"x": 1}
    assert store.get_recording("running") is not None
    assert store.prune_recordings(ended_before=500.0, now=1001.0) == []


def test_a_run_recorded_on_each_backend_replays_and_prunes(store: Store) -> None:
    """corral.run on the backend records its run; it replays exactly; after pruning it the
    audit chain still verifies."""

    @corral.tool(name="kb.read", effect="read")
    def kb(query: str) -> str:
        """Search the notes."""
        return f"notes on {query}"

    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    model = ScriptedModel([call("kb.read", query="a"), call("kb.read", query="b"), final("ok")])
    result = corral.run("go", model=model, tools=[kb], policy=policy, store=store)
    assert result.ok
    replayed = corral.replay(result.run_id, store=store)
    assert replayed.reproduced, replayed.summary
    record = store.get_run(result.run_id)
    assert record is not None and record.ended_at is not None
    assert store.prune_recordings(ended_before=record.ended_at + 1, now=record.ended_at + 2) == [
        result.run_id
    ]
    assert verify(store).ok
