"""``corral.replay``: run a recorded run again, offline, and say whether it did the same.

>>> import corral
>>> from corral.testing import ScriptedModel, call, final
>>> @corral.tool(name="kb.read", effect="read")
... def kb(query: str) -> str:
...     return "the vendor is down"
>>> policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
>>> store = corral.testing.MemoryStore()
>>> model = ScriptedModel([call("kb.read", query="vendor"), final("down")])
>>> result = corral.run("status?", model=model, tools=[kb], policy=policy, store=store)
>>> corral.replay(result.run_id, store=store).summary
'reproduced: same decisions, same stop reason, same usage'

The policy is rebuilt from the document stored with the recording (or ``policy`` is used:
what would this run have done under it?), the tools from their recorded definitions (or
``tools``' current ones), and the same loop (:func:`corral.run`) drives them against the
recorded model responses and tool outputs on a manual clock, over an in-memory store
seeded with the shared state the run met. The replayed run's decisions, stop reason and
usage are then compared with the recorded ones.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from corral.clock import ManualClock
from corral.controls.breaker import BreakerStates, Successes
from corral.controls.killswitch import SwitchCaches
from corral.exceptions import ConfigError
from corral.gateway.recording import window_scopes
from corral.gateway.services import Services
from corral.loop.bounded import run as corral_run
from corral.policy.schema import Policy
from corral.record.recording import FORMAT, canonical_json, digest_of, tool_definition
from corral.record.redact import REDACTED, redactor
from corral.record.sinks import Sinks
from corral.replay.compare import decisions, first_difference, usage_of
from corral.replay.player import (
    Player,
    RecordedApprovals,
    ReplayModel,
    replay_tool,
    seeded_store,
)
from corral.replay.result import Divergence, DivergenceReason, ReplayResult
from corral.result import RunResult
from corral.stores import Store, open_store
from corral.stores.memory import MemoryStore
from corral.stores.records import Event, RecordedRun, RunRecord
from corral.tools import Tool


def replay(
    run_id: str,
    *,
    store: str | Store | None = None,
    policy: Policy | None = None,
    tools: Iterable[Tool] | None = None,
) -> ReplayResult:
    """Replay run ``run_id`` from ``store`` (a URL or a store; the default store when
    ``None``); see the module docstring. Raises :class:`~corral.ConfigError` when the store
    has no such run."""
    opened: Store = store if isinstance(store, Store) else open_store(store)
    try:
        return _replay(opened, run_id, policy, list(tools or ()))
    finally:
        if opened is not store:
            opened.close()


def _replay(store: Store, run_id: str, policy: Policy | None, tools: list[Tool]) -> ReplayResult:
    record = store.get_run(run_id)
    if record is None:
        raise ConfigError(f"no run {run_id!r} in the store")
    recorded = store.get_recording(run_id)
    events = store.events(run_id)
    base = _Base(record)
    problem = unusable(record, recorded, events)
    if problem is not None:
        return base.failed(problem)
    assert recorded is not None and recorded.body is not None
    body = recorded.body
    rebuilt = _policy(store, recorded, policy)
    if isinstance(rebuilt, Divergence):
        return base.failed(rebuilt)
    definitions, notes = definitions_of(body, tools)
    if policy is not None:
        notes.append(f"replayed under policy {policy.digest} (recorded {recorded.policy_digest})")
    return _drive(base, store, record, body, events, rebuilt, definitions, notes)


class _Base:
    """What every result of one replay shares (the recorded side)."""

    def __init__(self, record: RunRecord) -> None:
        self.record = record

    def failed(self, divergence: Divergence, **more: Any) -> ReplayResult:
        r = self.record
        return ReplayResult(
            run_id=r.id,
            reproduced=False,
            recorded_stop_reason=r.stop_reason,
            stop_reason=None,
            recorded_usage=usage_of(r.usage),
            policy_digest=r.policy_digest,
            divergence=divergence,
            **more,
        )


def _not(message: str, reason: DivergenceReason = "not_replayable") -> Divergence:
    return Divergence(step=0, reason=reason, message=message)


def unusable(
    record: RunRecord, recorded: RecordedRun | None, events: list[Event]
) -> Divergence | None:
    """Why the recording cannot be replayed, or None."""
    if record.ended_at is None or record.status in ("running", "interrupted"):
        return _not(f"the run has not ended (status {record.status})")
    if recorded is None:
        return _not("the run has no recording (recording off, or made before recordings)")
    if recorded.body is None:
        return _not(f"the recording was pruned (its digest {recorded.digest[:16]} stays)")
    ends = [e for e in events if e.kind == "run_end"]
    sealed = ends[-1].data.get("recording") if ends else None
    actual = hashlib.sha256(canonical_json(recorded.body).encode()).hexdigest()
    if actual != recorded.digest or sealed != recorded.digest:
        return _not(
            "the recording does not match the digest sealed in the audit chain "
            f"(sealed {str(sealed)[:16]}, stored {recorded.digest[:16]}, "
            f"body {actual[:16]}): it was altered",
            "recording_altered",
        )
    if sum(e.kind == "run_start" for e in events) != 1:
        return _not("the run was resumed: a replay covers a run made in one go")
    body = recorded.body
    if body.get("format") != FORMAT:
        return _not(f"the recording's format {body.get('format')!r} is not {FORMAT}")
    if body.get("loop") is None:
        return _not("the run was driven by its caller's own loop; replay drives corral.run's")
    if body.get("shared", {}).get("incomplete"):
        return _not("the shared state the run met could not be read when it was recorded")
    return None


def _policy(store: Store, recorded: RecordedRun, given: Policy | None) -> Policy | Divergence:
    if given is not None:
        return given
    document = store.policy_document(recorded.policy_digest)
    if document is None:
        return _not(f"the store has no document of policy {recorded.policy_digest}")
    rebuilt = Policy.from_dict(dict(document), source=f"policy {recorded.policy_digest}")
    if rebuilt.digest != recorded.policy_digest:
        return _not(
            f"policy {recorded.policy_digest} rebuilds as {rebuilt.digest}: this version of "
            "corral reads the policy differently"
        )
    return rebuilt


def definitions_of(
    body: Mapping[str, Any], tools: list[Tool]
) -> tuple[dict[str, Mapping[str, Any]], list[str]]:
    """The tool definitions to replay with: the recorded ones, or the given tools' own
    (a note for each that changed)."""
    out: dict[str, Mapping[str, Any]] = {
        name: entry["definition"] for name, entry in (body.get("tools") or {}).items()
    }
    notes = []
    for t in tools:
        definition = tool_definition(t)
        before = (body.get("tools") or {}).get(t.name)
        if before is None:
            notes.append(f"tool {t.name} was not given to the recorded run")
        elif digest_of(definition) != before.get("digest"):
            notes.append(f"tool {t.name}'s definition changed since the run was recorded")
        out[t.name] = definition
    return out, notes


@dataclass(frozen=True, kw_only=True, slots=True)
class Played:
    """A recorded run played again: its result, the in-memory store it ran on (with the
    shared state it left), its events, the :class:`Player` (its divergence), the approver
    (the requests it had to assume an answer for), and its clock and services."""

    result: RunResult
    store: MemoryStore
    events: list[Event]
    player: Player
    approvals: RecordedApprovals
    clock: ManualClock
    services: Services


def play(
    record: RunRecord,
    body: Mapping[str, Any],
    events: list[Event],
    policy: Policy,
    definitions: Mapping[str, Mapping[str, Any]],
    *,
    shared: Mapping[str, Any] | None = None,
    lenient: bool = False,
    assume_approvals: bool = False,
) -> Played:
    """Drive :func:`corral.run` again over the recording ``body`` of run ``record`` (its
    recorded ``events`` give the approvals' decisions), under ``policy`` and with the tool
    ``definitions``; ``shared``: the shared state to start from instead of the recorded
    one; ``lenient``: see :class:`Player`; ``assume_approvals``: the answer to an approval
    request the recording has no decision for. Raises :class:`~corral.ConfigError` when the
    run cannot be set up again."""
    shared = (body.get("shared") or {}) if shared is None else shared
    clock = ManualClock(start=float(shared.get("wall") or 0.0))
    steps = list(body.get("steps") or [])
    player = Player(
        steps, clock, redactor(policy.redact.keys, policy.redact.patterns), lenient=lenient
    )
    first_model = next((s for s in steps if s.get("kind") == "model"), None)
    scopes = window_scopes(policy, record.tenant, record.agent, time.time())
    memory = seeded_store(shared, scopes)
    loop = body.get("loop") or {}
    services = Services(
        sinks=Sinks(), successes=Successes(), breakers=BreakerStates(), switches=SwitchCaches()
    )
    approvals = RecordedApprovals(events, assume=assume_approvals)
    # Credentials the tools declare: the recorded outputs already hold them redacted.
    credentials = {
        name: {c: REDACTED for c in d.get("credentials") or ()}
        for name, d in definitions.items()
        if d.get("credentials")
    }
    result = corral_run(
        record.task,
        model=ReplayModel(player, first_model),
        tools=[replay_tool(d, player) for d in definitions.values()],
        policy=policy,
        store=memory,
        tenant=record.tenant,
        agent=record.agent,
        instructions=loop.get("instructions"),
        max_tokens=loop.get("max_tokens"),
        run_id=record.id,
        clock=clock,
        services=services,
        credentials=credentials or None,
        approver=approvals,
    )
    return Played(
        result=result,
        store=memory,
        events=memory.events(record.id),
        player=player,
        approvals=approvals,
        clock=clock,
        services=services,
    )


def _drive(
    base: _Base,
    store: Store,
    record: RunRecord,
    body: Mapping[str, Any],
    events: list[Event],
    policy: Policy,
    definitions: Mapping[str, Mapping[str, Any]],
    notes: list[str],
) -> ReplayResult:
    """The replayed run, and its comparison with the recorded one."""
    try:
        played = play(record, body, events, policy, definitions)
    except ConfigError as exc:
        return base.failed(_not(f"the run cannot be set up again: {exc}"))
    result, player = played.result, played.player
    steps = body.get("steps") or []
    mine, theirs = decisions(events), decisions(played.events)
    diff = first_difference(mine, theirs)
    usage = usage_of(result.usage.to_dict())
    same = (
        diff is None
        and player.divergence is None
        and not played.approvals.assumed
        and result.stop_reason == record.stop_reason
        and usage == usage_of(record.usage)
    )
    divergence = None
    if not same:
        divergence = _why(diff, player.divergence, policy, body, notes, usage, record)
    return ReplayResult(
        run_id=record.id,
        reproduced=same,
        recorded_stop_reason=record.stop_reason,
        stop_reason=result.stop_reason,
        recorded_usage=usage_of(record.usage),
        usage=usage,
        steps=len(steps),
        decisions=len(mine),
        policy_digest=record.policy_digest,
        replayed_policy_digest=policy.digest,
        divergence=divergence,
        notes=tuple(notes),
    )


def _why(
    diff: tuple[int, str | None, str | None] | None,
    played: Divergence | None,
    policy: Policy,
    body: Mapping[str, Any],
    notes: list[str],
    usage: dict[str, Any],
    record: RunRecord,
) -> Divergence:
    """The first divergence and its most likely cause."""
    if diff is None and played is None:
        return Divergence(
            step=0,
            reason="decision_differs",
            message=f"same decisions, but usage {usage} differs from {usage_of(record.usage)}",
        )
    step = min(x for x in (diff[0] if diff else None, played.step if played else None) if x)
    expected = diff[1] if diff else (played.expected if played else None)
    got = diff[2] if diff else None
    if played is not None and played.reason == "recording_truncated" and played.step <= step:
        return played
    if policy.digest != body.get("policy"):
        reason: DivergenceReason = "policy_changed"
        message = f"the policy is {policy.digest}, the run was recorded under {body.get('policy')}"
    elif any("definition changed" in n for n in notes):
        reason = "tool_definition_changed"
        message = "; ".join(n for n in notes if "definition changed" in n)
    elif played is not None and played.step <= step:
        return Divergence(
            step=played.step,
            reason=played.reason,
            message=played.message,
            expected=played.expected,
            got=got,
        )
    elif got is not None and "outcome=invalid_output" in got:
        reason, message = "output_invalid", "a recorded tool output no longer passes its checks"
    else:
        reason, message = "decision_differs", "a decision differs from the recorded one"
    return Divergence(step=step, reason=reason, message=message, expected=expected, got=got)
