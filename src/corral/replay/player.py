"""What a replayed run talks to instead of the world: a model that gives the recorded
responses, tools that give the recorded outputs (each checked against what the run asks
now), on a manual clock advanced by the recorded timings, over an in-memory store seeded
with the shared state the run met.

The :class:`Player` walks the recording's steps in order; the first request that does not
match the next step is kept as the divergence (:attr:`Player.divergence`) and fails the
call, which ends the replayed run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from typing import Any

from corral.clock import ManualClock
from corral.controls.approvals import ApprovalDecision, ApprovalRequest
from corral.exceptions import NotExecuted
from corral.gateway.canonical import args_digest
from corral.gateway.recording import window_key
from corral.models.base import ModelRequest, ModelResponse, Price, ToolCallRequest
from corral.record.recording import SUMMARISED, RequestDigests
from corral.record.redact import Redactor
from corral.replay.result import Divergence, DivergenceReason
from corral.stores.memory import MemoryStore
from corral.stores.records import BreakerState, DegradeCounts, Event, KillSwitchState
from corral.stores.scopes import ScopedCharge
from corral.tools import Tool, ToolContext, tool


class ReplayDiverged(Exception):
    """The replayed run asked for something the recording does not have next."""


def _raised(error: Mapping[str, Any] | None, timed_out: bool) -> BaseException:
    """The recorded exception again: same type name, same text."""
    error = error or {}
    message = str(error.get("message", ""))
    name = str(error.get("type") or "Exception")
    if timed_out:
        return TimeoutError(message)
    if name == "NotExecuted":
        return NotExecuted(message)
    kind: type[Exception] = type(name, (Exception,), {"__module__": "corral.replay"})
    return kind(message)


class Player:
    """The recording's steps, handed out in order to the replay's model and tools.

    ``lenient`` (what-if): a request that differs from the recorded one is kept as the
    divergence but answered all the same — the model is assumed to answer as it did — and
    a tool call is answered by the next recorded attempt of the same call before the next
    model turn (recorded attempts the replay no longer makes are passed over); past the
    divergence the replay is a counterfactual, not a reproduction.
    """

    def __init__(
        self,
        steps: list[Mapping[str, Any]],
        clock: ManualClock,
        redactor: Redactor,
        *,
        lenient: bool = False,
    ) -> None:
        self.steps = steps
        self.clock = clock
        self.redactor = redactor
        self.lenient = lenient
        self.index = 0  # steps handed out
        self.divergence: Divergence | None = None
        self.requests = RequestDigests()

    def _next(self, kind: str, what: str) -> Mapping[str, Any]:
        if self.lenient:
            return self._find(kind, what)
        if self.divergence is not None:
            raise ReplayDiverged(self.divergence.message)
        if self.index >= len(self.steps):
            self._diverge("decision_differs", f"the replay asks for {what}; the recording ends")
        step = self.steps[self.index]
        self.index += 1
        if step.get("kind") != kind:
            recorded = describe(step)
            self._diverge(
                "decision_differs", f"the replay asks for {what}; recorded: {recorded}", recorded
            )
        return step

    def _find(self, kind: str, what: str) -> Mapping[str, Any]:
        """Lenient: the next recorded step of ``kind`` (a tool attempt: before the next
        model turn); past ones not asked for are passed over."""
        for i in range(self.index, len(self.steps)):
            found = self.steps[i].get("kind")
            if found == kind:
                if i > self.index:  # recorded attempts this replay did not make
                    self.index = i
                    self._differs("decision_differs", "a recorded tool call is not made again")
                self.index = i + 1
                return self.steps[i]
            if kind == "tool" and found == "model":
                break
        self._diverge("decision_differs", f"the replay asks for {what}; the recording has none")
        raise AssertionError("unreachable")  # _diverge raises

    def _diverge(self, reason: DivergenceReason, message: str, expected: str | None = None) -> Any:
        self._differs(reason, message, expected)
        raise ReplayDiverged(message)

    def _differs(self, reason: DivergenceReason, message: str, expected: str | None = None) -> None:
        """Keep the first divergence (the step it happened at)."""
        if self.divergence is None:
            self.divergence = Divergence(
                step=self.index, reason=reason, message=message, expected=expected
            )

    def _body(self, step: Mapping[str, Any], key: str) -> Any:
        body = step.get(key)
        if isinstance(body, Mapping) and SUMMARISED in body:
            self._diverge(
                "recording_truncated",
                f"the recording kept only the digest of this step's {key} (its size cap)",
            )
        return body

    # -- the model ---------------------------------------------------------------------
    def respond(self, request: ModelRequest) -> ModelResponse:
        step = self._next("model", "a model call")
        asked = self.requests(request.messages, request.tools, self.redactor)
        if asked != step.get("request"):
            (self._differs if self.lenient else self._diverge)(
                "model_request_differs",
                "the model request differs from the recorded one (the prompt, the tools "
                "offered or the history changed: code, prompt or policy)",
                f"request {str(step.get('request'))[:12]}",
            )
        self.clock.advance(float(step.get("seconds") or 0.0))
        outcome = step.get("outcome")
        if outcome != "ok":
            raise _raised(step.get("error"), outcome == "timeout")
        body = self._body(step, "response") or {}
        calls = tuple(
            ToolCallRequest(name=c.get("name"), arguments=c.get("arguments"), id=c.get("id"))
            for c in body.get("tool_calls") or ()
        )
        # As recorded, even figures the gateway will refuse (it must refuse them again).
        fields_: dict[str, Any] = {
            "text": body.get("text"),
            "tool_calls": calls,
            "input_tokens": body.get("input_tokens"),
            "output_tokens": body.get("output_tokens"),
            "model": body.get("model"),
            "finish_reason": body.get("finish_reason") or "stop",
        }
        return ModelResponse(**fields_)

    # -- the tools ---------------------------------------------------------------------
    def execute(self, name: str, arguments: Mapping[str, Any], call_id: str | None) -> Any:
        digest = args_digest(arguments)
        if self.lenient:
            step = self._attempt(name, digest)
        else:
            step = self._next("tool", f"a call of {name}")
        if step.get("tool") != name or step.get("args") != digest:
            self._diverge(
                "decision_differs",
                f"the replay calls {name} with other arguments or another tool than recorded",
                describe(step),
            )
        self.clock.advance(float(step.get("seconds") or 0.0))
        outcome = step.get("outcome")
        if outcome in ("ok", "invalid"):
            return self._body(step, "output")
        raise _raised(step.get("error"), outcome == "timeout")

    def _attempt(self, name: str, digest: str) -> Mapping[str, Any]:
        """Lenient: the next recorded attempt of this call before the next model turn;
        recorded attempts passed over (calls the replay no longer makes) make it diverge."""
        for i in range(self.index, len(self.steps)):
            step = self.steps[i]
            if step.get("kind") == "model":
                break
            if step.get("tool") == name and step.get("args") == digest:
                if i > self.index:
                    self.index = i
                    self._differs("decision_differs", "a recorded tool call is not made again")
                self.index = i + 1
                return step
        self._diverge(
            "decision_differs",
            f"the replay calls {name} with arguments the recording has no output for",
        )
        raise AssertionError("unreachable")  # _diverge raises


class RecordedApprovals:
    """An in-process approver that gives each approval request the decision the recorded
    run got for the same call (tool and argument digest, in order), and ``assume`` for a
    request the recording has no decision for (kept in :attr:`assumed`)."""

    def __init__(self, events: Sequence[Event], *, assume: bool = False) -> None:
        self._decided: dict[tuple[str, str], deque[ApprovalDecision]] = {}
        for e in events:
            if e.kind == "approval" and not e.data.get("error"):
                key = (str(e.data.get("tool")), str(e.data.get("args_digest")))
                decision = ApprovalDecision(
                    approved=e.data.get("approved") is True,
                    approver=str(e.data.get("approver") or "local"),
                    reason=str(e.data.get("reason") or ""),
                )
                self._decided.setdefault(key, deque()).append(decision)
        self.assume = assume
        #: Requests the recording had no decision for: (tool, argument digest).
        self.assumed: list[tuple[str, str]] = []

    def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        queue = self._decided.get((request.tool, request.args_digest))
        if queue:
            return queue.popleft()
        self.assumed.append((request.tool, request.args_digest))
        what = "approved" if self.assume else "denied"
        return ApprovalDecision(
            approved=self.assume,
            approver="corral whatif",
            reason=f"{what} by assumption: the recorded run was never asked",
        )


def describe(step: Mapping[str, Any]) -> str:
    """A recorded step as one line."""
    if step.get("kind") == "model":
        return f"model call {step.get('model')} ({step.get('outcome')})"
    return (
        f"tool {step.get('tool')} attempt {step.get('attempt')} "
        f"({step.get('outcome')}, call {step.get('call_id')})"
    )


class ReplayModel:
    """The recorded model: same name, price and endpoint; answers from the :class:`Player`."""

    def __init__(self, player: Player, first: Mapping[str, Any] | None) -> None:
        self._player = player
        first = first or {}
        self.name = str(first.get("model") or "replayed-model")
        price = first.get("price")
        if price:
            self.price = Price(
                input_usd_per_mtok=Decimal(price[0]), output_usd_per_mtok=Decimal(price[1])
            )
        dependency = first.get("dependency")
        if dependency:
            self.dependency = dependency

    async def respond(self, request: ModelRequest) -> ModelResponse:
        return self._player.respond(request)


def replay_tool(definition: Mapping[str, Any], player: Player) -> Tool:
    """A tool with ``definition`` (as recorded, or a tool's current one) whose calls are
    answered by the :class:`Player`."""
    name = str(definition["name"])

    if definition.get("context"):

        def with_context(ctx: ToolContext, **arguments: Any) -> Any:
            return player.execute(name, arguments, None)

        fn: Any = with_context
    else:

        def plain(**arguments: Any) -> Any:
            return player.execute(name, arguments, None)

        fn = plain
    made = tool(
        fn,
        name=name,
        effect=definition.get("effect") if definition.get("effect_declared") else None,
        description=str(definition.get("description") or ""),
        cost_usd=str(definition.get("cost_usd") or "0"),
        expensive=bool(definition.get("expensive")),
        timeout=definition.get("timeout"),
        retries=int(definition.get("retries") or 0),
        idempotent=bool(definition.get("idempotent")),
        idempotency_key_from=definition.get("idempotency_key_from") or (),
        args_schema=definition.get("parameters") or {"type": "object"},
        output_schema=definition.get("output_schema"),
        credentials=definition.get("credentials") or (),
    )
    return _WithDefaults(**{f.name: getattr(made, f.name) for f in fields(made)})


@dataclass(frozen=True, kw_only=True)
class _WithDefaults(Tool):
    """A tool checked by its JSON Schema whose arguments get the schema's defaults, as a
    tool typed by its signature gets them (so the arguments' digest is the recorded one)."""

    def validate_args(self, args: Any) -> dict[str, Any]:
        checked = super().validate_args(args)
        properties = self.args_schema.get("properties") or {}
        for key, prop in properties.items():
            if key not in checked and isinstance(prop, Mapping) and "default" in prop:
                checked[key] = prop["default"]
        return checked


def seeded_store(shared: Mapping[str, Any], scopes: list[ScopedCharge]) -> MemoryStore:
    """An in-memory store holding the shared state the run met: kill switches, breakers
    and their degrade windows (with the successes not yet written counted in), and what
    its window limits had counted (put in ``scopes``, the same limits' scopes now)."""
    store = MemoryStore()
    used = shared.get("windows") or {}
    now = time.time()
    for scoped in scopes:
        found = used.get(window_key(scoped.scope))
        if not found or not (found[0] or Decimal(found[1])):
            continue
        charge = replace(scoped, calls=int(found[0]), usd=Decimal(found[1]), max_calls=None,
                         max_usd=None)  # fmt: skip
        grant = store.reserve([charge], now=now)
        if isinstance(grant, str):
            store.settle(grant, [charge])
    for switch in shared.get("kill_switches") or ():
        store.set_kill_switch(KillSwitchState(**switch))
    for name, b in (shared.get("breakers") or {}).items():
        if b.get("state") in ("open", "half_open"):
            store.set_breaker(name, BreakerState(state="open", until=float(b["until"])))
        start, size = float(b["start"]), float(b["size"])
        buckets = {
            start: DegradeCounts(**b["current"]),
            start - size: DegradeCounts(**b["previous"]),
        }
        pending = b.get("pending")
        if pending and float(pending[0]) in buckets:
            at = float(pending[0])
            old = buckets[at]
            buckets[at] = DegradeCounts(
                calls=old.calls + int(pending[1]), failures=old.failures, retries=old.retries
            )
        store.load_degrade(name, buckets)
    return store
