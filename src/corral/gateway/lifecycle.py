"""A run's start and end in the store: load a resumed run (refusing another tenant's or a
damaged one), check at start what would otherwise surprise later (approvals nobody could
give, constraints on arguments no tool takes, tools allowed but never given), open or
re-open its record, and record its end (first stop wins).

Imports the policy's checks and the stores' types; the run state gives the rest.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from corral.budgets.meter import Usage
from corral.clock import DEADLINE
from corral.exceptions import ConfigError, Stop, StoreError
from corral.gateway import recording
from corral.gateway.canonical import args_digest
from corral.gateway.state import GAVE_UP, RunState
from corral.policy.schema import Policy
from corral.policy.tool_args import check_constraints
from corral.record.views import usage_from_events
from corral.result import Status
from corral.stops import StopReason
from corral.stores.base import Event, RunRecord
from corral.tools import Tool

log = logging.getLogger("corral")

#: Stop reasons whose status is ``error`` (something failed) rather than ``stopped``
#: (a bound or a decision ended the run).
ERROR_REASONS: frozenset[str] = frozenset(
    {
        "agent_error",
        "model_error",
        "tool_error",
        "invalid_model_output",
        "invalid_tool_output",
        "control_plane_unavailable",
    }
)

#: (policy digest, message) of the start warnings logged by this process.
_WARNED: set[tuple[str, str]] = set()

_UNREGISTERED = (
    "tools.allow lists {name} but no tool of that name was given to the run; "
    "calls to it are handled as unknown tools"
)
_DESCRIBED = (
    "tools.allow lists {name}, described only by the policy (tools.specs.{name}), but the "
    "bounded loop has no function to run it: calls to it are handled as unknown tools; "
    "give corral.run a tool of that name, or govern it with Run.authorize and Run.report"
)


def status_of(reason: StopReason) -> Status:
    """``ok`` for ``ok``; ``error`` for failures; ``stopped`` for bounds and decisions."""
    if reason == "ok":
        return "ok"
    return "error" if reason in ERROR_REASONS else "stopped"


# -- start ------------------------------------------------------------------------------
def open_run(policy: Policy, *, run_id: str | None = None, **settings: Any) -> RunState:
    """A run's state, started: a new run, or the stored one ``run_id`` names resumed from
    its usage, its set-up checked and its start recorded (``settings`` are
    :class:`~corral.gateway.state.RunState`'s).

    A store that cannot be read does not raise here: the run's first action raises the
    stop (fail closed, but inside the run, so that ``with Run(...)`` records it).
    """
    run = RunState(policy, run_id=run_id, **settings)
    events: list[Event] = []
    try:
        existing = load(run, run_id)
        if existing is not None:
            events = run.store_call(run.store.events, run.id)
    except Stop:
        existing = None
    prior = None if existing is None else prior_usage(run, existing, events)
    if existing is not None:
        run.resumed = True
        run.set_limits(run.budget.limits, prior=prior)  # counted from the stored usage
    if prior is None:
        run.time.resume_from(0.0, 0.0)  # the run's time starts now, not before the load
    begin(run, existing, events)
    return run


def load(run: RunState, run_id: str | None) -> RunRecord | None:
    """The stored record of the run being resumed (None for a new run)."""
    if run_id is None:
        return None
    record = run.store_call(run.store.get_run, run_id)
    if record is not None and record.tenant != run.tenant:
        raise ConfigError(f"run {run_id!r} belongs to another tenant")
    return record


def prior_usage(run: RunState, record: RunRecord, events: Sequence[Event]) -> Usage | None:
    """The usage a resumed run starts from: the stored one, and no less than its events
    show (a run whose process died mid-run never wrote its usage, but each call it made
    was recorded as it ended: resuming it must not start its budgets from zero).

    A damaged stored usage (negative, not finite, malformed) would start the run with a
    credit: fail closed instead, as for a store that cannot be read (the first action stops
    with ``control_plane_unavailable``)."""
    try:
        return at_least(Usage.from_dict(record.usage), Usage.from_dict(usage_from_events(events)))
    except ValueError as exc:
        # The record stays (it is not re-created at the end) and its usage as found,
        # so that every later resume refuses too.
        run.damaged_usage = run.recorded = True
        run.stamp(
            Stop(
                "control_plane_unavailable",
                "store",
                message=f"run {record.id!r} has damaged usage in the store ({exc}); "
                "it cannot be resumed",
            )
        )
        return None


def at_least(stored: Usage, shown: Usage) -> Usage:
    """Each figure of ``stored``, raised to what ``shown`` (the events) says where that is
    more."""
    by_tool = dict(stored.tool_calls_by_tool)
    for tool, calls in shown.tool_calls_by_tool.items():
        by_tool[tool] = max(by_tool.get(tool, 0), calls)
    return replace(
        stored,
        steps=max(stored.steps, shown.steps),
        tool_calls=max(stored.tool_calls, shown.tool_calls),
        input_tokens=max(stored.input_tokens, shown.input_tokens),
        output_tokens=max(stored.output_tokens, shown.output_tokens),
        usd=max(stored.usd, shown.usd),
        active_seconds=max(stored.active_seconds, shown.active_seconds),
        tool_calls_by_tool=MappingProxyType(by_tool),
    )


def begin(run: RunState, existing: RunRecord | None, events: Sequence[Event] = ()) -> None:
    """Check the run's set-up, open its record and say it started."""
    _check_approval_channel(run)
    check_constraints(run.policy, run.tools)
    if run.stop is None:
        with contextlib.suppress(Stop):
            _open_record(run, existing, events)
    policy = run.policy
    recording.start(run)
    run.events.add(
        "run_start",
        resumed=run.resumed,
        policy=policy.digest,
        mode=policy.mode_name,
        observed=sorted(run.observing),
        tenant=run.tenant,
        agent=run.agent,
        tools=tool_digests(run),
        # The figures the metrics export for this run (record/metrics.py).
        track=list(policy.monitoring.track) if policy.monitoring.metrics else [],
    )
    if log.isEnabledFor(logging.INFO):
        log.info(
            "run %s %s: tenant %s, agent %s, policy %s (%s)",
            run.id,
            "resumed" if run.resumed else "started",
            run.tenant or "-",
            run.agent or "-",
            policy.digest,
            policy.mode_name,
        )
    _start_warnings(run)


def tool_digests(run: RunState) -> dict[str, str]:
    """Each allowed tool's definition digest (name, description, argument and output
    schemas, effect, as the code declares them): what ``corral drift`` compares across
    windows to name a changed tool as the likely cause."""
    return {name: _tool_digest(tool) for name, tool in run.tools.items() if name in run.allowed}


#: id(tool) -> (the tool, weakly; its digest): a tool's definition is frozen, so its digest
#: is computed once per tool object, not at every run's start.
_DIGESTS: dict[int, tuple[weakref.ref[Tool], str]] = {}


def _tool_digest(tool: Tool) -> str:
    key = id(tool)
    known = _DIGESTS.get(key)
    if known is not None and known[0]() is tool:
        return known[1]
    spec = tool.spec()
    spec.update(output_schema=tool.output_schema, effect=tool.effect)
    digest = args_digest(spec)[:16]

    def forget(_: object) -> None:  # with the tool: its id may then name another
        _DIGESTS.pop(key, None)

    _DIGESTS[key] = (weakref.ref(tool, forget), digest)
    return digest


def new_record(run: RunState) -> RunRecord:
    return RunRecord(
        id=run.id,
        tenant=run.tenant,
        agent=run.agent,
        task=run.task,
        policy_digest=run.policy.digest,
        started_at=run.started_at,
        kill_mode=run.policy.kill_switch.mode_when_enabled,
    )


def _open_record(run: RunState, existing: RunRecord | None, events: Sequence[Event]) -> None:
    if existing is None:
        run.store_call(run.store.create_run, new_record(run))
        run.recorded = True
        return
    run.recorded = True
    run.events.seq = max((e.seq for e in events), default=0)
    run.store_call(
        run.store.update_run,
        run.id,
        status="running",
        ended_at=None,
        kill_mode=run.policy.kill_switch.mode_when_enabled,  # this segment's policy
    )


def _check_approval_channel(run: RunState) -> None:
    """Refuse at start a policy needing approvals that nobody could give: with no
    in-process approver, the store's queue is the channel, and an in-memory store is
    reachable from no other process."""
    if run.approver is not None or run.observes("approvals"):
        return
    if run.store_shared:
        return
    needing = sorted(
        name for name in run.tools if name in run.allowed and run.effective(name).require_approval
    )
    if needing:
        raise ConfigError(
            f"the policy requires approval for {', '.join(needing)} but no approval channel "
            "is reachable: the in-memory store is seen by no other process, so nobody "
            "could run `corral approvals approve`; use a SQLite or PostgreSQL store "
            "(store=... or CORRAL_DB), pass approver=... (a trusted local approver), or "
            "set writes.require_approval: false for these tools"
        )


def _start_warnings(run: RunState) -> None:
    """Say at start what would otherwise surprise later: an allowed tool no code
    registered (its calls are unknown tools), and one whose effect nobody declared
    (a write: with approvals on, every call waits for a human). In the run's trace
    every time; in the log once per process per policy and tool, so that a fleet of
    runs does not flood it."""
    policy = run.policy
    for name, why in sorted(run.unpinned.items()):
        said = (
            f"{name}: its definition changed since it was pinned (tools.pins): it is hidden "
            "and its calls are refused; review it and pin it again (corral check --pin)"
            if why == "definition_changed"
            else f"{name}: no pin in tools.pins names it: it is hidden and its calls are "
            "refused; review it and pin it (corral check --pin)"
        )
        run.events.add("warning", tool=name, message=said, why=why)
        if (policy.digest, said) not in _WARNED:
            _WARNED.add((policy.digest, said))
            log.warning(said)
    for name in policy.tools.allow:
        message: str | None
        if name not in run.tools:
            spec = policy.spec(name)
            described = spec is not None and spec.args_schema is not None
            message = (_DESCRIBED if described else _UNREGISTERED).format(name=name)
        else:
            message = _undeclared_effect(run, name)
        if message is None:
            continue
        run.events.add("warning", tool=name, message=message)
        if (policy.digest, message) not in _WARNED:
            _WARNED.add((policy.digest, message))
            log.warning(message)


def _undeclared_effect(run: RunState, name: str) -> str | None:
    """The warning for tool ``name`` when neither its code nor the policy declares its
    effect (so it is treated as a write), else None."""
    tool = run.tools[name]
    spec = run.policy.spec(name)
    if tool.effect_declared or (spec is not None and spec.effect is not None):
        return None
    eff = run.effective(name)
    fix = (
        f"set tools.specs.{name}.effect: read"
        if tool.described
        else "declare effect='read' in @corral.tool"
    )
    if eff.require_approval and not run.observes("approvals"):
        timeout = run.policy.writes.approval_timeout_seconds
        what = f"each call waits for an approval (up to {timeout:g} s)"
    else:
        what = "it is never retried and a disable_writes kill switch stops it"
    return (
        f"tool {name} declares no effect, so it is treated as a write: {what} "
        f"— {fix} if it only reads"
    )


# -- end --------------------------------------------------------------------------------
def close(run: RunState, reason: StopReason, *, answer: str | None = None) -> str | None:
    """Persist the end of the run (first stop wins); returns why it could not be, or None.

    The run's outcome is never masked by a store failure here, nor is the failure
    silent: the caller puts it on the result.
    """
    run.budget.settle_outstanding()  # before the usage is read: what may have happened counts
    usage = run.budget.usage()
    info = run.stop if reason != "ok" else None
    status = status_of(reason)
    recorded = recording.finish(run)
    run.events.add(
        "run_end",
        stop_reason=reason,
        status=status,
        usage=usage.to_dict(),
        stop=info.to_dict() if info else None,
        # The recording's digest: the audit chain holds it, also once its body is pruned.
        **({"recording": recorded[0].digest} if recorded else {}),
    )
    pending = run.events.take()
    outstanding = run.budget.take_outstanding()
    store = run.store
    # Recording the end waits on the store no longer than other calls of the run (a
    # run ended by its deadline gets one short attempt per write).
    deadline = run.time.deadline
    token = DEADLINE.set(deadline) if run.timed_store else None
    try:
        if run.store_gave_up and time.monotonic() > deadline:
            raise StoreError(GAVE_UP)
        if not run.recorded:
            store.create_run(new_record(run))
            run.recorded = True
        # A shared hold still outstanding at the end (a call authorized and never
        # reported) is settled at what it held: the action may have happened, so its
        # spend stays counted, and its lease stops being renewed.
        for grant, held in outstanding:
            store.settle(grant, held)
        if pending:
            store.append_events(pending)
            if run.services.sinks.installed:
                run.services.sinks.emit(pending)
        redact = run.redactor.data
        store.update_run(
            run.id,
            status=status,
            stop_reason=reason,
            stop=redact(info.to_dict()) if info else None,
            answer=answer,
            **({} if run.damaged_usage else {"usage": usage.to_dict()}),
            ended_at=time.time(),
            would_stop=[redact(w.to_dict()) for w in run.would_stop],
        )
        if recorded is not None:
            store.save_recording(recorded[0], policy=recorded[1])
    except Exception as exc:  # a store object may raise anything: the end is unrecorded
        return f"the end of the run could not be recorded: {StoreError.of(exc)}"
    finally:
        if token is not None:
            DEADLINE.reset(token)
    return None
