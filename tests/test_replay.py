"""Recording and replay: every governed run of the demo replays exactly; a changed policy, a
changed tool definition, an altered or truncated recording are each reported at the right
step with why; bodies are redacted and capped."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.record.audit import verify
from corral.sim.demo import simulate
from corral.stores import open_store
from corral.stores.sqlite import SQLiteStore
from corral.testing import ManualClock, MemoryStore, ScriptedModel, call, final

SECRET = "hunter2-prod-credential"


@corral.tool(name="kb.read", effect="read")
def kb(query: str, limit: int = 3) -> str:
    """Search the notes."""
    return f"<p>notes on {query}</p>"


@corral.tool(name="fetch", effect="read", cost_usd=0.5)
def fetch(url: str) -> str:
    """Fetch a page."""
    return f"page {url}"


def policy(**extra: Any) -> corral.Policy:
    data: dict[str, Any] = {"tools": {"allow": ["kb.read", "fetch"]}, "budgets": {"max_usd": 5}}
    data.update(extra)
    return corral.Policy.from_dict(data)


def script() -> ScriptedModel:
    """kb.read, fetch, fetch, answer: steps 1-7 (model, tool, model, tool, model, tool, model)."""
    return ScriptedModel(
        [
            call("kb.read", query="vendor"),
            call("fetch", url="https://a.example/1"),
            call("fetch", url="https://a.example/2"),
            final("the vendor is down"),
        ]
    )


def recorded(store: Any, pol: corral.Policy | None = None) -> str:
    result = corral.run(
        "status?", model=script(), tools=[kb, fetch], policy=pol or policy(), store=store
    )
    assert result.ok
    return result.run_id


def test_every_governed_run_of_the_demo_replays_exactly(tmp_path: Path) -> None:
    """The demo's governed side on SQLite: each of its runs reproduces its decisions, stop
    reason and usage, whatever the run met (tool errors, retries, breakers opening)."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    figures = simulate(seed=11, runs=40, failure_rate=0.6, db=url, run_prefix="rp")
    store = open_store(url)
    try:
        runs = [r for r in store.list_runs(limit=10_000) if r.id.startswith("rp-")]
        assert len(runs) == figures["governed"]["runs"] >= 40
        reasons = {r.stop_reason for r in runs}
        assert {"ok", "tool_error", "dependency_degraded"} <= reasons  # a varied day
        results = [corral.replay(r.id, store=store) for r in runs]
    finally:
        store.close()
    diverged = [(r.run_id, r.summary) for r in results if not r.reproduced]
    assert diverged == []
    for r in results:
        assert r.stop_reason == r.recorded_stop_reason
        assert r.usage == r.recorded_usage and r.decisions > 0


def test_a_changed_policy_is_reported_at_the_step_it_changes() -> None:
    """Under a policy capping fetch at one call, the replay diverges at step 6 (the second
    fetch), saying the policy changed and what was decided before and now."""
    store = MemoryStore()
    run_id = recorded(store)
    capped = policy(tools={"allow": ["kb.read", "fetch"], "specs": {"fetch": {"max_calls": 1}}})
    result = corral.replay(run_id, store=store, policy=capped)
    assert not result.reproduced
    d = result.divergence
    assert d is not None and d.step == 6 and d.reason == "policy_changed"
    assert d.expected is not None and "tool_call" in d.expected and "fetch" in d.expected
    assert d.got is not None and "max_tool_calls" in d.got
    assert result.stop_reason == "max_tool_calls" and result.recorded_stop_reason == "ok"
    assert result.summary.startswith("diverged at step 6 (policy_changed)")


def test_the_same_policy_given_again_reproduces() -> None:
    """A policy equal in meaning to the recorded one (another spelling) reproduces."""
    store = MemoryStore()
    run_id = recorded(store)
    again = corral.Policy.from_dict(
        {"budgets": {"max_usd": 5.0, "max_steps": 30}, "tools": {"allow": ["kb.read", "fetch"]}}
    )
    assert corral.replay(run_id, store=store, policy=again).reproduced


def test_a_changed_tool_definition_is_reported() -> None:
    """fetch now declares an output schema its recorded output fails: the replay diverges at
    that step, naming the tool definition that changed."""

    @corral.tool(name="fetch", effect="read", cost_usd=0.5, output_schema={"type": "object"})
    def fetch_v2(url: str) -> dict[str, str]:
        """Fetch a page."""
        return {"page": url}

    store = MemoryStore()
    run_id = recorded(store)
    result = corral.replay(run_id, store=store, tools=[fetch_v2])
    d = result.divergence
    assert d is not None and d.reason == "tool_definition_changed" and d.step == 4
    assert "fetch" in d.message
    assert any("fetch's definition changed" in n for n in result.notes)
    assert result.stop_reason == "invalid_tool_output"


def test_a_changed_prompt_is_a_model_request_that_differs() -> None:
    """Replaying with another task text: the first model request is not the recorded one."""
    store = MemoryStore()
    run_id = recorded(store)
    record = store.get_run(run_id)
    assert record is not None
    store._runs[run_id] = type(record)(**{**_fields(record), "task": "another task"})
    result = corral.replay(run_id, store=store)
    d = result.divergence
    assert d is not None and (d.step, d.reason) == (1, "model_request_differs")


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


def test_an_altered_recording_is_reported(tmp_path: Path) -> None:
    """A recorded tool output edited in the database: its digest no longer matches the one
    sealed in the audit chain (also when the stored digest is rewritten to match)."""
    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    run_id = recorded(store)
    store.close()
    with sqlite3.connect(path) as conn:
        (text,) = conn.execute(
            "SELECT body FROM corral_recordings WHERE run_id = ?", (run_id,)
        ).fetchone()
        body = json.loads(text)
        step = next(s for s in body["steps"] if s["kind"] == "tool")
        step["output"] = "notes: all fine, ignore the vendor"
        conn.execute(
            "UPDATE corral_recordings SET body = ? WHERE run_id = ?", (json.dumps(body), run_id)
        )
    store = SQLiteStore(path)
    try:
        result = corral.replay(run_id, store=store)
        assert result.divergence is not None
        assert result.divergence.reason == "recording_altered" and not result.reproduced
        assert result.summary.startswith("not replayed (recording_altered)")
        forged = store.get_recording(run_id)
        assert forged is not None and forged.body is not None
        from corral.record.recording import digest_of

        with sqlite3.connect(path) as conn:
            conn.execute(
                "UPDATE corral_recordings SET digest = ? WHERE run_id = ?",
                (digest_of(forged.body), run_id),
            )
        again = corral.replay(run_id, store=store)
        assert again.divergence is not None and again.divergence.reason == "recording_altered"
    finally:
        store.close()


def kept_bytes(body: Any) -> int:
    """The size of the bodies a recording kept whole."""
    total = 0
    for step in body["steps"]:
        kept = step.get("response") or step.get("output")
        if kept is not None and not (isinstance(kept, dict) and "summarised" in kept):
            total += len(kept) if isinstance(kept, str) else len(json.dumps(kept))
    return total


def test_a_recording_past_its_cap_keeps_digests_and_replay_says_so() -> None:
    """With a small cap the oldest bodies become digests: the bodies kept stay within the
    cap and a replay reports it cannot reproduce past the first summarised step."""
    store = MemoryStore()
    small = policy(recording={"max_bytes": 500})
    run_id = recorded(store, small)
    rec = store.get_recording(run_id)
    assert rec is not None and rec.body is not None
    body = rec.body
    assert 1 <= body["summarised"] < len(body["steps"])
    assert kept_bytes(body) <= 500
    first, last = body["steps"][0], body["steps"][-1]
    assert set(first["response"]) == {"summarised", "bytes"}
    assert last["response"]["text"] == "the vendor is down"  # the newest bodies are kept
    result = corral.replay(run_id, store=store)
    d = result.divergence
    assert d is not None and (d.step, d.reason) == (1, "recording_truncated")


def test_recording_can_be_turned_off() -> None:
    """recording.enabled: false keeps nothing; a replay says there is no recording."""
    store = MemoryStore()
    run_id = recorded(store, policy(recording={"enabled": False}))
    assert store.get_recording(run_id) is None
    end = store.events(run_id)[-1]
    assert end.kind == "run_end" and "recording" not in end.data
    result = corral.replay(run_id, store=store)
    assert result.divergence is not None and result.divergence.reason == "not_replayable"
    assert "no recording" in result.summary


def test_secrets_in_tool_outputs_are_not_stored_in_clear(tmp_path: Path) -> None:
    """A tool output carrying the tool's credential and a token-like text: the recording in
    the SQLite file holds neither, and the run still replays exactly."""

    @corral.tool(name="vault.read", effect="read", credentials=("api_key",))
    def vault(name: str, ctx: corral.ToolContext) -> str:
        """Read a record."""
        return f"key {ctx.credentials['api_key']} token sk-abcdefghijklmnopqrstuvwx123456"

    path = tmp_path / "c.db"
    store = SQLiteStore(path)
    pol = corral.Policy.from_dict({"tools": {"allow": ["vault.read"]}})
    model = ScriptedModel([call("vault.read", name="x"), final("done")])
    result = corral.run(
        "read it",
        model=model,
        tools=[vault],
        policy=pol,
        store=store,
        credentials={"vault.read": {"api_key": SECRET}},
    )
    assert result.ok
    store.close()
    raw = path.read_bytes()
    for wal in tmp_path.glob("c.db-wal"):
        raw += wal.read_bytes()
    assert SECRET.encode() not in raw
    assert b"sk-abcdefghijklmnopqrstuvwx123456" not in raw
    store = SQLiteStore(path)
    try:
        rec = store.get_recording(result.run_id)
        assert rec is not None and "[REDACTED]" in json.dumps(rec.body)
        assert corral.replay(result.run_id, store=store).reproduced
    finally:
        store.close()


def test_prune_drops_bodies_keeps_digests_and_the_audit_chain_verifies(tmp_path: Path) -> None:
    """Pruning runs that ended before the cutoff empties their bodies only: the audit chain
    still verifies, the digest stays, and a replay says the recording was pruned."""
    store = SQLiteStore(tmp_path / "c.db")
    try:
        run_id = recorded(store)
        record = store.get_run(run_id)
        assert record is not None and record.ended_at is not None
        assert store.prune_recordings(ended_before=record.ended_at - 1, now=0.0) == []
        assert store.prune_recordings(ended_before=record.ended_at + 1, now=5.0) == [run_id]
        rec = store.get_recording(run_id)
        assert rec is not None and rec.body is None and rec.pruned_at == 5.0 and rec.digest
        assert store.events(run_id)[-1].data["recording"] == rec.digest
        assert verify(store).ok
        result = corral.replay(run_id, store=store)
        assert result.divergence is not None and "pruned" in result.divergence.message
    finally:
        store.close()


def test_a_run_governed_by_its_callers_loop_is_not_replayed() -> None:
    """A run driven with ``Run`` has a recording, but replay drives corral.run's loop only."""
    store = MemoryStore()
    with corral.Run(policy(), tools=[kb], store=store) as run:
        run.call("kb.read", {"query": "x"})
        run.finish("done")
    assert store.get_recording(run.id) is not None
    result = corral.replay(run.id, store=store)
    assert result.divergence is not None and "own loop" in result.divergence.message


def test_the_clock_and_failures_are_replayed() -> None:
    """A run on a virtual clock whose tool fails then succeeds on retry, and whose model
    takes time: the replay reproduces the attempts, the retry and the usage."""
    clock = ManualClock(start=5_000.0)
    attempts = {"n": 0}

    @corral.tool(name="flaky", effect="read", retries=2)
    def flaky(x: int) -> str:
        """Fails once."""
        clock.advance(1.5)
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("reset by peer")
        return f"value {x}"

    store = MemoryStore()
    pol = corral.Policy.from_dict({"tools": {"allow": ["flaky"]}})
    model = ScriptedModel([call("flaky", x=1), final("ok")])
    result = corral.run("go", model=model, tools=[flaky], policy=pol, store=store, clock=clock)
    assert result.ok and attempts["n"] == 2
    replayed = corral.replay(result.run_id, store=store)
    assert replayed.reproduced, replayed.summary
    assert replayed.steps == 4  # model, failed attempt, retried attempt, model


@pytest.mark.parametrize("stop_at", [1, 2])
def test_stopped_runs_replay_with_their_stop(stop_at: int) -> None:
    """A run stopped by a budget replays to the same stop."""
    store = MemoryStore()
    pol = corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read"]}, "budgets": {"max_tool_calls": stop_at}}
    )
    model = ScriptedModel([call("kb.read", query=f"q{i}") for i in range(4)] + [final("x")])
    result = corral.run("go", model=model, tools=[kb], policy=pol, store=store)
    assert result.stop_reason == "max_tool_calls"
    replayed = corral.replay(result.run_id, store=store)
    assert replayed.reproduced and replayed.stop_reason == "max_tool_calls"


def test_an_unknown_run_is_a_config_error() -> None:
    """corral.replay of a run the store does not have raises ConfigError."""
    with pytest.raises(corral.ConfigError, match="no run"):
        corral.replay("nope", store=MemoryStore())


def test_a_long_run_holds_no_more_than_about_twice_its_cap() -> None:
    """Hundreds of calls with large outputs: the oldest bodies are summarised while the run
    goes, so it holds about twice its cap at most, and stores at most its cap."""

    @corral.tool(name="big.read", effect="read")
    def big(i: int) -> str:
        """A large page."""
        return f"{i} " + "x" * 3000

    store = MemoryStore()
    cap = 20_000
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["big.read"]},
            "budgets": {"max_tool_calls": 1000, "max_steps": 1000},
            "loops": {"repeats": 1000, "window": 1000},
            "recording": {"max_bytes": cap},
        }
    )
    with corral.Run(pol, tools=[big], store=store) as run:
        for i in range(400):
            run.call("big.read", {"i": i})
            held = sum(len(s[-1]) for s in run._core.recording.steps if isinstance(s, tuple))  # type: ignore[union-attr]
            assert held <= 2 * cap + 64 * 3100
        run.finish("done")
    rec = store.get_recording(run.id)
    assert rec is not None and rec.body is not None
    assert kept_bytes(rec.body) <= cap and rec.body["summarised"] > 390
    assert rec.bytes < cap + 400 * 400  # each step's own fields stay: about 300 bytes
    assert rec.body["steps"][-1]["output"].startswith("399 ")


def test_what_a_window_limit_had_counted_is_replayed() -> None:
    """A tenant's daily cap of 3 calls: a second run, refused at its second call because a
    first run used two, replays to the same refusal (the window's use is seeded); the first
    run replays too."""
    store = MemoryStore()
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"]},
            "limits": [{"per": "tenant", "window": "1d", "max_calls": 3}],
        }
    )

    def once() -> corral.RunResult:
        model = ScriptedModel([call("kb.read", query="a"), call("kb.read", query="b"), final("x")])
        return corral.run("go", model=model, tools=[kb], policy=pol, store=store, tenant="acme")

    first, second = once(), once()
    assert first.ok and second.stop_reason == "max_tool_calls"
    for result in (first, second):
        replayed = corral.replay(result.run_id, store=store)
        assert replayed.reproduced, replayed.summary
    assert corral.replay(second.run_id, store=store).stop_reason == "max_tool_calls"
