"""The run's recording for replay, as the gateway makes it: started with the run (tools,
the shared state met), fed by the model turns and the tool attempts, saved at the end.

The hot path pays an attribute check and an append per call: bodies are redacted,
capped and serialized once, when the run ends (:func:`finish`), and written with its end.
What is recorded: :mod:`corral.record.recording`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from corral import _safe
from corral.budgets import windows
from corral.budgets.meter import Charge
from corral.clock import DEADLINE
from corral.controls import breaker
from corral.gateway import _outputs
from corral.gateway.guards.killswitch import Cancelled
from corral.gateway.ops import Attempt, CallModel
from corral.models.base import Price
from corral.policy.schema import Policy
from corral.record.recording import (
    Recorder,
    canonical_json,
    digest_of,
    error_of,
    policy_document,
    response_body,
    tool_definition,
)
from corral.stores.base import DegradeCounts, RecordedRun, ScopedCharge, Store

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.state import RunState

T = TypeVar("T")
log = logging.getLogger("corral")

#: The most of an invalid tool output a recording keeps as JSON (characters).
MAX_INVALID = 100_000
#: The deepest an invalid tool output is kept as JSON (deeper: as text), as hygiene bounds
#: a valid one.
MAX_DEPTH = 64

#: Policy documents by digest, made once per process (a policy's document never changes).
_DOCUMENTS: dict[str, dict[str, Any]] = {}
_MAX_DOCUMENTS = 64


def start(run: RunState) -> None:
    """Start recording a new run (when its policy says to): its tools and the shared state
    it meets at the start (the clock, kill switches, its tools' breakers)."""
    settings = run.policy.recording
    if not settings.enabled or run.resumed:
        return
    rec = Recorder(policy=run.policy.digest, max_bytes=settings.max_bytes)
    try:
        rec.tools.update(_definitions(run))
    except Exception:  # a tool whose definition cannot be written: nothing is recorded
        return
    rec.shared["wall"] = breaker.wall(run)
    run.recording = rec
    if run.stop is not None:  # the store already failed: the run stops at its first action
        rec.shared["incomplete"] = True
        return
    try:
        switches = _read(run, run.switch_cache.switches, run.store)
        rec.shared["kill_switches"] = [asdict(s) for s in switches]
        for name in sorted({run.effective(n).breaker for n in run.tools if n in run.allowed}):
            _breaker(run, rec, name)
        if run.policy.limits:
            rec.shared["windows"] = _windows(run)
    except Exception:  # the store fails: the run's first action stops it (fail closed)
        rec.shared["incomplete"] = True


#: Tools' recorded definitions and digests, made once per tool object: (tool, entry).
_TOOLS: dict[int, tuple[Any, dict[str, Any]]] = {}


def _definitions(run: RunState) -> dict[str, dict[str, Any]]:
    out = {}
    for name, tool in run.tools.items():
        known = _TOOLS.get(id(tool))
        if known is None or known[0] is not tool:
            if len(_TOOLS) >= 1024:
                _TOOLS.clear()
            definition = tool_definition(tool)
            known = _TOOLS[id(tool)] = (tool, {"digest": digest_of(definition),
                                                "definition": definition})  # fmt: skip
        out[name] = known[1]
    return out


def _read(run: RunState, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """A store read for the recording, waiting no longer than the run's own reads may (its
    deadline): its failure is the recording's (``incomplete``), never the run's stop."""
    token = DEADLINE.set(run.time.deadline) if run.timed_store else None
    try:
        return fn(*args, **kwargs)
    finally:
        if token is not None:
            DEADLINE.reset(token)


def window_key(scope: str) -> str:
    """A window scope without its window's start (``tenant:acme/1d@1733443200.0`` is
    ``tenant:acme/1d``): what a replay, made in another window, matches it by."""
    return scope.split("@", 1)[0]


def window_scopes(
    policy: Policy, tenant: str | None, agent: str | None, now: float
) -> list[ScopedCharge]:
    """The scopes of ``policy``'s window limits for a run of ``tenant`` and ``agent`` at
    ``now`` (one per scope, whichever tool a limit names)."""
    found: dict[str, ScopedCharge] = {}
    for limit in policy.limits:
        charge = Charge(tool_calls=1, tool=limit.tool)
        for scoped in windows.scoped(policy, charge, tenant=tenant, agent=agent, now=now):
            found.setdefault(scoped.scope, scoped)
    return list(found.values())


def _windows(run: RunState) -> dict[str, list[Any]]:
    """What the run's window limits had counted when it started: (calls, USD) by scope."""
    out = {}
    for scoped in window_scopes(run.policy, run.tenant, run.agent, time.time()):
        calls, usd = _read(run, run.store.scope_usage, scoped.scope)
        out[window_key(scoped.scope)] = [calls, str(usd)]
    return out


def _breaker(run: RunState, rec: Recorder, name: str) -> None:
    """What the breaker ``name`` holds now (:func:`breaker_snapshot`)."""
    token = DEADLINE.set(run.time.deadline) if run.timed_store else None
    try:
        rec.shared["breakers"][name] = breaker_snapshot(
            run.store,
            run.services.successes,
            name,
            now=breaker.wall(run),
            size=run.policy.degrade.window_seconds,
        )
    finally:
        if token is not None:
            DEADLINE.reset(token)


def breaker_snapshot(
    store: Store, successes: breaker.Successes, name: str, *, now: float, size: float
) -> dict[str, Any]:
    """What the breaker ``name`` holds at ``now`` (of a degrade window of ``size``
    seconds), as a recording keeps it: its state, its window, the successes this process
    has not yet written."""
    state = store.breaker(name, now=now)
    window = store.degrade_window(name, now=now, size=size)
    pending = successes.pending(store, name)
    return {
        "state": state.state,
        "until": state.until,
        "size": size,
        "current": _counts(window.current),
        "previous": _counts(window.previous),
        "start": now // size * size,
        "pending": list(pending) if pending else None,
    }


def _counts(counts: DegradeCounts) -> dict[str, int]:
    # dataclasses.asdict, without its deep copy (the slowest part of a run's start)
    return {"calls": counts.calls, "failures": counts.failures, "retries": counts.retries}


def endpoint(run: RunState, endpoint: str) -> None:
    """The model endpoint's breaker, the first time the run calls it."""
    rec = run.recording
    if rec is None or endpoint in rec.shared["breakers"] or rec.shared.get("incomplete"):
        return
    try:
        _breaker(run, rec, endpoint)
    except Exception:  # as in start
        rec.shared["incomplete"] = True


def model_call(
    run: RunState, op: CallModel, names: tuple[str, str, int], result: Attempt, elapsed: float
) -> None:
    """One model call (``op``; ``names``: the model's name, its endpoint and the clamped
    ``max_tokens``): the request's digest, the model, the response or the error. A request
    or response that cannot be recorded (a hostile object, nested too deep) is kept as an
    ``unrecordable`` step: the run goes on as it would have."""
    rec = run.recording
    if rec is None:
        return
    size = None
    try:
        step, size = _model_step(run, rec, op, names, result, elapsed)
    except Exception as exc:  # whatever a hostile request or response raises
        step = {
            "request": None,
            "model": names[0],
            "endpoint": names[1],
            "seconds": elapsed,
            "outcome": "unrecordable",
            "error": error_of(exc),
        }
    rec.model_call(step, size)


def _model_step(
    run: RunState,
    rec: Recorder,
    op: CallModel,
    names: tuple[str, str, int],
    result: Attempt,
    elapsed: float,
) -> tuple[dict[str, Any], int]:
    """The step, and its response's size (its canonical JSON's length)."""
    model = op.model
    request = op.request
    name, endpoint_name, clamped = names
    price = getattr(model, "price", None)
    dependency = getattr(model, "dependency", None)
    step: dict[str, Any] = {
        "request": rec.requests(request.messages, request.tools, run.redactor),
        "model": name,
        "endpoint": endpoint_name,
        "dependency": dependency if isinstance(dependency, str) else None,
        "price": [str(price.input_usd_per_mtok), str(price.output_usd_per_mtok)]
        if isinstance(price, Price)
        else None,
        "max_tokens": clamped,
        "seconds": elapsed,
    }
    if isinstance(result.error, Cancelled):
        step["outcome"] = "cancelled"
    elif result.ok:
        step["outcome"] = "ok"
        text = canonical_json(response_body(result.value))
        step["response"] = json.loads(text)  # a plain copy, as plain_json makes it
        return step, len(text)
    else:
        step["outcome"] = "timeout" if result.timed_out else "error"
        step["error"] = error_of(result.error)
    return step, 0


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON data (a copy); raises when it is not (too deep, circular,
    a number too long to write, a hostile object)."""
    return json.loads(canonical_json(value))


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON ``value`` nests more than ``limit`` levels (walked without recursion)."""
    level: list[Any] = [value]
    for _ in range(limit + 1):
        level = [
            child
            for item in level
            if isinstance(item, dict | list)
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def invalid_output(run: RunState, value: Any) -> Any:
    """A tool output that failed its checks, as the recording keeps it: plain JSON scrubbed
    of the run's secrets (at most :data:`MAX_INVALID` characters of it), else its text."""
    try:
        plain = plain_json(_outputs.plain(value))
        if len(canonical_json(plain)) > MAX_INVALID or _deeper_than(plain, MAX_DEPTH):
            raise ValueError("too large or too deep to keep whole")
        return run.redactor.secrets_only(plain)
    except Exception:  # any shape: its text, bounded
        return run.redactor.text(_safe.text(value, MAX_INVALID))


def tool_failed(call: Call, result: Attempt) -> None:
    """A tool attempt that raised, timed out, did not run or was cancelled."""
    rec = call.run.recording
    if rec is None:
        return
    if isinstance(result.error, Cancelled):
        outcome = "cancelled"
    elif type(result.error).__name__ == "NotExecuted":
        outcome = "not_executed"
    else:
        outcome = "timeout" if result.timed_out else "error"
    rec.tool_attempt(
        call.tool_name,
        call.call_id,
        call.digest,
        call.attempt,
        call.elapsed,
        outcome,
        error_of(result.error),
    )


def tool_output(call: Call, output: Any, outcome: str = "ok") -> None:
    """A tool attempt that returned: the output as the model sees it (``ok``), or as it
    was when its checks failed (``invalid``)."""
    rec = call.run.recording
    if rec is not None:
        rec.tool_attempt(
            call.tool_name, call.call_id, call.digest, call.attempt, call.elapsed, outcome, output
        )


def finish(run: RunState) -> tuple[RecordedRun, dict[str, Any]] | None:
    """The run's recording as stored, and its policy's document; None when not recording,
    or when it cannot be made (the run's end is never stopped by its recording)."""
    rec = run.recording
    if rec is None:
        return None
    try:
        return _finished(run, rec)
    except Exception:  # whatever a body holds that cannot be written
        log.warning("run %s: its recording could not be made; it cannot be replayed", run.id)
        return None


def _finished(run: RunState, rec: Recorder) -> tuple[RecordedRun, dict[str, Any]]:
    body, text = rec.body(run.redactor)
    record = RecordedRun(
        run_id=run.id,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        policy_digest=rec.policy,
        saved_at=time.time(),
        bytes=len(text),
        body=body,
        text=text,
    )
    return record, document(run)


def document(run: RunState) -> dict[str, Any]:
    """The run's policy as a document (made once per digest in this process)."""
    digest = run.policy.digest
    found = _DOCUMENTS.get(digest)
    if found is None:
        if len(_DOCUMENTS) >= _MAX_DOCUMENTS:
            _DOCUMENTS.clear()
        found = _DOCUMENTS[digest] = policy_document(run.policy)
    return found
