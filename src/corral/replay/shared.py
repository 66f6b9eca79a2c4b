"""The shared state a what-if carries from run to run (:mod:`corral.replay.whatif`): what
each evaluated run spent in the window limits' scopes, under the recorded policy and under
the new one, and the breakers as the runs played under the new policy left them.

A run starts from the window spend its recording met, less what the runs evaluated before
it in the same window spent under the old policy, plus what they spend under the new one; a
breaker from the state the last evaluated run sharing it left. Scopes and breakers that a
run predicted past its recording changed are marked estimated, and so is every run that
meets them afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.gateway.recording import breaker_snapshot, window_key
from corral.policy.schema import Policy
from corral.replay.compare import EXECUTED
from corral.replay.runner import Played
from corral.stores.records import Event, RunRecord


def charges(events: Iterable[Event]) -> list[Charge]:
    """What a run charged to shared scopes, from its events: each model call's USD, and
    each executed tool attempt (one call and its USD)."""
    out = []
    for e in events:
        usd = Decimal(str(e.data.get("usd") or 0))
        if e.kind == "model_call":
            if usd:
                out.append(Charge(usd=usd))
        elif e.kind == "tool_call" and e.data.get("outcome") in EXECUTED:
            out.append(Charge(tool_calls=1, usd=usd, tool=e.data.get("tool")))
    return out


class SharedState:
    """The shared state as it evolves under the new policy: the window limits' spend and
    the breakers (see the module docstring and :mod:`corral.replay.whatif`'s)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # (started at, scope, calls, USD) each evaluated run spent, under each policy
        self.old: list[tuple[float, str, int, Decimal]] = []
        self.new: list[tuple[float, str, int, Decimal]] = []
        self.breakers: dict[str, dict[str, Any]] = {}
        #: Window scopes of the new policy that no recording counted.
        self.new_scopes: set[str] = set()
        #: Scopes and breakers that runs predicted past their recording have changed.
        self.estimated: set[str] = set()

    def _spent(self, scopes: Mapping[str, float], ledger: list[tuple[float, str, int, Decimal]],
               now: float) -> dict[str, tuple[int, Decimal]]:  # fmt: skip
        """What ``ledger`` holds for each scope (instance start, or rolling length) at
        ``now``."""
        out: dict[str, tuple[int, Decimal]] = {}
        for at, scope, calls, usd in ledger:
            if scope not in scopes:
                continue
            if "@" not in scope and at <= now - scopes[scope]:  # rolling: out of the window
                continue
            c, u = out.get(scope, (0, Decimal(0)))
            out[scope] = (c + calls, u + usd)
        return out

    def _scopes(self, record: RunRecord) -> dict[str, float]:
        """The new policy's window scopes of ``record``'s run (scope: its length)."""
        found = windows_of(self.policy, record.tenant, record.agent, record.started_at)
        return {s: size for s, size in found}

    def before(self, record: RunRecord, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The shared state the run starts from under the new policy, and whether runs
        predicted past their recording left part of it."""
        shared = dict(body.get("shared") or {})
        now = record.started_at
        scopes = self._scopes(record)
        met = dict(shared.get("windows") or {})
        old = self._spent(scopes, self.old, now)
        new = self._spent(scopes, self.new, now)
        counted: dict[str, list[Any]] = {}
        for scope in scopes:
            key = window_key(scope)
            calls, usd = new.get(scope, (0, Decimal(0)))
            if key in met:
                was_calls, was_usd = old.get(scope, (0, Decimal(0)))
                calls += int(met[key][0]) - was_calls
                usd += Decimal(str(met[key][1])) - was_usd
            else:
                self.new_scopes.add(key)
            counted[key] = [max(0, calls), str(max(Decimal(0), usd))]
        shared["windows"] = counted
        breakers = dict(shared.get("breakers") or {})
        for name in breakers:
            if name in self.breakers:
                breakers[name] = self.breakers[name]
        shared["breakers"] = breakers
        estimated = any(s in self.estimated for s in scopes) or any(
            f"breaker:{name}" in self.estimated for name in breakers
        )
        return shared, estimated

    def _charge(self, ledger: list[tuple[float, str, int, Decimal]], record: RunRecord,
                events: Iterable[Event]) -> set[str]:  # fmt: skip
        """Put what the run spent in each scope in ``ledger``; the scopes it spent in."""
        totals: dict[str, tuple[int, Decimal]] = {}
        for charge in charges(events):
            for scoped in windows.scoped(
                self.policy, charge, tenant=record.tenant, agent=record.agent,
                now=record.started_at,
            ):  # fmt: skip
                c, u = totals.get(scoped.scope, (0, Decimal(0)))
                totals[scoped.scope] = (c + scoped.calls, u + scoped.usd)
        for scope, (calls, usd) in totals.items():
            ledger.append((record.started_at, scope, calls, usd))
        return set(totals)

    def after(
        self, record: RunRecord, body: Mapping[str, Any], events: list[Event], played: Played
    ) -> None:
        """Count what the run spent under each policy, and keep the breakers it left."""
        self._charge(self.old, record, events)
        spent = self._charge(self.new, record, played.events)
        now = played.clock.monotonic()
        size = self.policy.degrade.window_seconds
        names = list((body.get("shared") or {}).get("breakers") or {})
        for name in names:
            self.breakers[name] = breaker_snapshot(
                played.store, played.services.successes, name, now=now, size=size
            )
        if played.player.divergence is not None:  # what it left is a counterfactual's
            self.estimated |= spent | {f"breaker:{name}" for name in names}

    def unplayed(self, record: RunRecord, events: list[Event]) -> None:
        """A run that cannot be played spends what it did under both policies."""
        self._charge(self.old, record, events)
        self._charge(self.new, record, events)


def windows_of(
    policy: Policy, tenant: str | None, agent: str | None, now: float
) -> list[tuple[str, float]]:
    """``policy``'s window scopes for a run of ``tenant`` and ``agent`` at ``now``, each
    with its window's length in seconds (a calendar scope names its window's start)."""
    out: dict[str, float] = {}
    for limit in policy.limits:
        charge = Charge(tool_calls=1, tool=limit.tool)
        for scoped in windows.scoped(policy, charge, tenant=tenant, agent=agent, now=now):
            label = scoped.scope.rsplit("/", 1)[1].split("@", 1)[0].removesuffix(" rolling")
            out.setdefault(scoped.scope, float(windows.window_length(label)[0]))
    return list(out.items())


__all__ = ["SharedState", "charges", "windows_of"]
