"""What-if: recorded runs evaluated again under another policy, in the order they ran,
with the shared state as it would have evolved under it.

>>> import corral
>>> from corral.testing import MemoryStore, ScriptedModel, call, final
>>> @corral.tool(name="kb.read", effect="read")
... def kb(query: str) -> str:
...     return "the vendor is down"
>>> store = MemoryStore()
>>> allow = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
>>> for _ in range(3):
...     model = ScriptedModel([call("kb.read", query="a"), call("kb.read", query="b"), final("ok")])
...     _ = corral.run("status?", model=model, tools=[kb], policy=allow, store=store)
>>> stricter = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]},
...                                     "budgets": {"max_tool_calls": 1}})
>>> report = whatif(stricter, store=store, since=0)
>>> report.changed, report.stopped_earlier
(3, {'max_tool_calls': 3})

Each run is played again (:func:`~corral.replay.runner.play`) against its recorded model
responses and tool outputs under the new policy. What it meets is carried from run to run:

- **window limits** (``limits``): each scope starts from what the recorded run met, less
  what the runs evaluated before it in the same window spent under the old policy, plus
  what they spend under the new one (a scope the old policy did not have counts the
  evaluated runs only);
- **breakers**: from the state the first run of each breaker met, then as the evaluated
  runs' own failures and successes leave it (a breaker shared with runs outside the
  selection misses their calls);
- **kill switches**: as each run met them (operators' actions are history, not policy);
- **approvals**: the decision the recorded run got for the same call; a call the recorded
  run was never asked about gets ``assume_approvals`` (approved by default), and is listed.

A run is predicted **exactly** while every model request and tool call it makes is one the
recording holds; the first that is not (a denied call changes what the model is shown next)
is the point past which the prediction is a **counterfactual**: the model is assumed to
answer as it did. Runs that cannot be played (no recording, pruned, resumed, driven by
their caller's own loop) are kept as they were and listed.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral.exceptions import ConfigError
from corral.policy.schema import Policy
from corral.replay.compare import decided, describe, line
from corral.replay.result import Divergence
from corral.replay.runner import Played, definitions_of, play, unusable
from corral.replay.shared import SharedState, charges, windows_of
from corral.stores import Store
from corral.stores.records import Event, RunRecord

#: The most runs one what-if evaluates (the oldest of the period first).
MAX_RUNS = 100_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Figures:
    """What a run used, as the what-if compares it."""

    steps: int = 0
    tool_calls: int = 0
    tokens: int = 0
    usd: Decimal = Decimal(0)

    @classmethod
    def of(cls, usage: Mapping[str, Any]) -> Figures:
        return cls(
            steps=int(usage.get("steps") or 0),
            tool_calls=int(usage.get("tool_calls") or 0),
            tokens=int(usage.get("tokens") or 0),
            usd=Decimal(str(usage.get("usd") or 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "tokens": self.tokens,
            "usd": str(self.usd),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class RunVerdict:
    """One run: what it did, and what it would have done under the new policy.

    ``exact``: the prediction needed nothing the recording does not hold. Else
    ``counterfactual_from`` is the step (model calls and tool attempts, from 1) past which
    the model is assumed to answer as it did, or ``shared_estimated`` says the shared state
    the run met (a window limit's spend, a breaker) was left by runs predicted that way.
    ``divergence``: the first decision that differs (None: the same decisions).
    ``denied``: the calls the new policy refuses that the old one did not (``tool (why)``);
    ``approvals``: the calls it sends for approval that the recorded run was never asked
    about. ``not_evaluated``: why the run could not
    be played (it is then counted as it was).
    """

    run_id: str
    started_at: float
    tenant: str | None
    agent: str | None
    task: str
    recorded_stop_reason: str | None
    stop_reason: str | None
    recorded: Figures
    predicted: Figures
    exact: bool = True
    counterfactual_from: int | None = None
    shared_estimated: bool = False
    divergence: Divergence | None = None
    denied: tuple[str, ...] = ()
    approvals: tuple[str, ...] = ()
    not_evaluated: str | None = None

    @property
    def evaluated(self) -> bool:
        return self.not_evaluated is None

    @property
    def changed(self) -> bool:
        """Whether the run would have ended otherwise or used something else."""
        return (
            self.stop_reason != self.recorded_stop_reason
            or self.predicted != self.recorded
            or bool(self.denied or self.approvals)
        )

    @property
    def stopped_earlier(self) -> bool:
        """It stops for another reason than it did, having done less."""
        return (
            self.stop_reason not in (None, "ok")
            and self.stop_reason != self.recorded_stop_reason
            and self.predicted.steps + self.predicted.tool_calls
            <= self.recorded.steps + self.recorded.tool_calls
        )

    @property
    def answered_before(self) -> bool:
        return self.recorded_stop_reason == "ok"

    @property
    def answered_after(self) -> bool:
        return self.stop_reason == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "tenant": self.tenant,
            "agent": self.agent,
            "task": self.task,
            "evaluated": self.evaluated,
            "not_evaluated": self.not_evaluated,
            "recorded_stop_reason": self.recorded_stop_reason,
            "stop_reason": self.stop_reason,
            "recorded": self.recorded.to_dict(),
            "predicted": self.predicted.to_dict(),
            "changed": self.changed,
            "stopped_earlier": self.stopped_earlier,
            "exact": self.exact,
            "counterfactual_from": self.counterfactual_from,
            "shared_estimated": self.shared_estimated,
            "divergence": None if self.divergence is None else self.divergence.to_dict(),
            "denied": list(self.denied),
            "approvals": list(self.approvals),
        }


@dataclass(frozen=True, kw_only=True)
class WhatIf:
    """Every run of the period, each with its :class:`RunVerdict`, and the totals."""

    policy_digest: str
    since: float
    until: float
    tenant: str | None = None
    agent: str | None = None
    assume_approvals: bool = True
    runs: Sequence[RunVerdict] = field(default_factory=list)
    notes: Sequence[str] = field(default_factory=list)

    @property
    def evaluated(self) -> int:
        return sum(r.evaluated for r in self.runs)

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.runs)

    @property
    def counterfactual(self) -> int:
        return sum(not r.exact for r in self.runs)

    @property
    def stopped_earlier(self) -> dict[str, int]:
        """Runs that would have stopped earlier, by their new stop reason."""
        found = Counter(str(r.stop_reason) for r in self.runs if r.stopped_earlier)
        return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))

    def stop_mix(self, *, predicted: bool) -> dict[str, int]:
        """How many runs ended for each reason, as recorded or as predicted."""
        found = Counter(
            str((r.stop_reason if predicted else r.recorded_stop_reason) or "none")
            for r in self.runs
        )
        return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))

    def total(self, name: str, *, predicted: bool) -> Any:
        return sum(
            (getattr(r.predicted if predicted else r.recorded, name) for r in self.runs),
            Decimal(0) if name == "usd" else 0,
        )

    @property
    def no_longer_answered(self) -> list[str]:
        return [r.run_id for r in self.runs if r.answered_before and not r.answered_after]

    @property
    def newly_answered(self) -> list[str]:
        return [r.run_id for r in self.runs if r.answered_after and not r.answered_before]

    def spend_per_day(self) -> list[tuple[str, Decimal, Decimal]]:
        """(UTC day, USD recorded, USD predicted) for each day with a run, in order."""
        days: dict[str, list[Decimal]] = {}
        for r in self.runs:
            day = dt.datetime.fromtimestamp(r.started_at, dt.UTC).strftime("%Y-%m-%d")
            pair = days.setdefault(day, [Decimal(0), Decimal(0)])
            pair[0] += r.recorded.usd
            pair[1] += r.predicted.usd
        return [(day, pair[0], pair[1]) for day, pair in sorted(days.items())]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON (``corral whatif --json``; stable keys)."""
        before_usd = self.total("usd", predicted=False)
        after_usd = self.total("usd", predicted=True)
        before_calls = self.total("tool_calls", predicted=False)
        after_calls = self.total("tool_calls", predicted=True)
        return {
            "policy_digest": self.policy_digest,
            "since": self.since,
            "until": self.until,
            "tenant": self.tenant,
            "agent": self.agent,
            "assume_approvals": "approve" if self.assume_approvals else "deny",
            "runs": len(self.runs),
            "evaluated": self.evaluated,
            "changed": self.changed,
            "counterfactual": self.counterfactual,
            "stopped_earlier": self.stopped_earlier,
            "calls_denied": sum(len(r.denied) for r in self.runs),
            "calls_sent_for_approval": sum(len(r.approvals) for r in self.runs),
            "tool_calls": {
                "recorded": before_calls,
                "predicted": after_calls,
                "saved": before_calls - after_calls,
            },
            "usd": {
                "recorded": str(before_usd),
                "predicted": str(after_usd),
                "saved": str(before_usd - after_usd),
            },
            "no_longer_answered": self.no_longer_answered,
            "newly_answered": self.newly_answered,
            "stop_reasons": {
                "recorded": self.stop_mix(predicted=False),
                "predicted": self.stop_mix(predicted=True),
            },
            "spend_per_day": [
                {"day": day, "recorded": str(a), "predicted": str(b)}
                for day, a, b in self.spend_per_day()
            ],
            "notes": list(self.notes),
            "verdicts": [r.to_dict() for r in self.runs],
        }


# -- evaluating --------------------------------------------------------------------------
def whatif(
    policy: Policy,
    *,
    store: Store,
    since: float,
    until: float | None = None,
    tenant: str | None = None,
    agent: str | None = None,
    assume_approvals: bool = True,
    limit: int = MAX_RUNS,
    progress: Callable[[int, int], None] | None = None,
) -> WhatIf:
    """Evaluate under ``policy`` every ended run in ``store`` that started in ``[since,
    until)`` (epoch seconds; ``until`` defaults to now), of ``tenant`` and ``agent`` when
    given, oldest first, at most ``limit``; see the module docstring. ``progress`` is called
    with (runs done, runs in all) after each run."""
    until = time.time() if until is None else until
    if until <= since:
        raise ConfigError("the period is empty: --since must be before --until")
    picked = store.run_figures(since=since, until=until, tenant=tenant, agent=agent, limit=limit)
    state = SharedState(policy)
    verdicts = []
    for i, figures in enumerate(picked, 1):
        record = store.get_run(figures.run_id)
        if record is not None:
            verdicts.append(_evaluate(store, record, policy, state, assume_approvals))
        if progress is not None:
            progress(i, len(picked))
    notes = []
    if len(picked) >= limit:
        notes.append(f"only the oldest {limit} runs of the period were evaluated")
    if state.new_scopes:
        notes.append(
            "window limits the recorded runs' policy did not have count the evaluated runs "
            f"only: {', '.join(sorted(state.new_scopes))}"
        )
    return WhatIf(
        policy_digest=policy.digest,
        since=since,
        until=until,
        tenant=tenant,
        agent=agent,
        assume_approvals=assume_approvals,
        runs=verdicts,
        notes=notes,
    )


def _evaluate(
    store: Store, record: RunRecord, policy: Policy, state: SharedState, assume: bool
) -> RunVerdict:
    recorded = store.get_recording(record.id)
    events = store.events(record.id)
    base = RunVerdict(
        run_id=record.id,
        started_at=record.started_at,
        tenant=record.tenant,
        agent=record.agent,
        task=record.task,
        recorded_stop_reason=record.stop_reason,
        stop_reason=record.stop_reason,
        recorded=Figures.of(record.usage),
        predicted=Figures.of(record.usage),
    )
    problem = unusable(record, recorded, events)
    if problem is not None:
        state.unplayed(record, events)
        return _kept(base, problem.message)
    assert recorded is not None and recorded.body is not None
    body = recorded.body
    definitions, _ = definitions_of(body, [])
    shared, estimated = state.before(record, body)
    try:
        played = play(
            record,
            body,
            events,
            policy,
            definitions,
            shared=shared,
            lenient=True,
            assume_approvals=assume,
        )
    except ConfigError as exc:
        state.unplayed(record, events)
        return _kept(base, f"the run cannot be set up again: {exc}")
    state.after(record, body, events, played)
    return _verdict(base, events, played, estimated)


def _kept(base: RunVerdict, why: str) -> RunVerdict:
    return RunVerdict(
        **{f: getattr(base, f) for f in RunVerdict.__dataclass_fields__ if f != "not_evaluated"},
        not_evaluated=why,
    )


def _verdict(base: RunVerdict, events: list[Event], played: Played, estimated: bool) -> RunVerdict:
    divergence = None
    before, after = decided(events), decided(played.events)
    for i in range(max(len(before), len(after))):
        was = before[i] if i < len(before) else None
        now = after[i] if i < len(after) else None
        lines = [None if x is None else line(x[1]) for x in (was, now)]
        if lines[0] != lines[1]:
            divergence = Divergence(
                step=(was or now or (0, None))[0],
                reason="policy_changed",
                message=f"{describe(was and was[1])} → {describe(now and now[1])}",
                expected=lines[0],
                got=lines[1],
            )
            break
    played_div = played.player.divergence
    return RunVerdict(
        run_id=base.run_id,
        started_at=base.started_at,
        tenant=base.tenant,
        agent=base.agent,
        task=base.task,
        recorded_stop_reason=base.recorded_stop_reason,
        stop_reason=played.result.stop_reason,
        recorded=base.recorded,
        predicted=Figures.of(played.result.usage.to_dict()),
        exact=played_div is None and not estimated,
        counterfactual_from=None if played_div is None else played_div.step,
        shared_estimated=estimated,
        divergence=divergence,
        denied=tuple(_new(_denials(played.events), _denials(events))),
        approvals=tuple(
            f"{tool} (assumed {'approved' if played.approvals.assume else 'denied'})"
            for tool, _ in played.approvals.assumed
        ),
    )


def _denials(events: Iterable[Event]) -> list[str]:
    out = []
    for e in events:
        if e.kind == "denied" and e.data.get("tool"):
            why = e.data.get("why") or e.data.get("reason") or "denied"
            out.append(f"{e.data['tool']} ({why})")
    return out


def _new(now: list[str], before: list[str]) -> list[str]:
    """The entries of ``now`` beyond those of ``before`` (as multisets, in order)."""
    left = Counter(before)
    out = []
    for item in now:
        if left[item]:
            left[item] -= 1
        else:
            out.append(item)
    return out


__all__ = ["Figures", "RunVerdict", "WhatIf", "charges", "whatif", "windows_of"]
