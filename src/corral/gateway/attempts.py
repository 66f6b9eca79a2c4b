"""The end of one attempt of a tool call (the chain's last steps, :mod:`corral.gateway.chain`
before them): the breaker told, the hold settled at what the outcome costs
(:mod:`corral.gateway.charges`), then either the output checked, cleaned and recorded
(:func:`_observe`), or the failure recorded and retried when it may be (:func:`_failed`),
or a call a ``stop_all`` switch cancelled in flight (:func:`_cancelled`).
"""

from __future__ import annotations

from typing import Any, NoReturn

from corral import _safe
from corral.budgets.meter import Charge, Hold
from corral.controls import breaker
from corral.exceptions import NotExecuted, Stop, ToolRejected
from corral.gateway import _outputs, charges, recording
from corral.gateway.call import Call
from corral.gateway.guards import cache, idempotency, killswitch, output
from corral.gateway.ops import Attempt

#: The first pause before a retry (seconds), doubled at each further attempt.
RETRY_BACKOFF = 0.1


class Retry:
    """What :func:`attempted` returns for a failed attempt that is tried again."""

    __slots__ = ("pause",)

    def __init__(self, pause: float) -> None:
        self.pause = pause  # seconds to wait first


def attempted(call: Call, hold: Hold, started: float, result: Attempt) -> Any:
    """The end of an attempt that started at ``started``: the observation (output checks
    and hygiene, outcome recorded), a :class:`Retry`, or the stop or refusal raised."""
    core, eff = call.run, call.eff
    call.elapsed = core.time.now() - started
    if isinstance(result.error, killswitch.Cancelled):
        if core.recording is not None:
            recording.tool_failed(call, result)
        _cancelled(call, hold, result)  # a stop_all switch cancelled it in flight
    if not isinstance(result.error, NotExecuted):  # the tool says it did not run
        breaker.record(core, eff.breaker, result.ok, probe=call.probe)
    if result.ok:
        charges.settle(core.budget, hold, "ok", eff)
        return _observe(call, result)
    if core.recording is not None:
        recording.tool_failed(call, result)
    return Retry(_failed(call, hold, result))  # raises unless it is retried


def _usd(charge: Charge | None) -> str:
    """What an attempt was charged in USD, as its event says it (``0``: refunded)."""
    return "0" if charge is None else str(charge.usd)


def _cancelled(call: Call, hold: Hold, result: Attempt) -> NoReturn:
    """A stop_all switch cancelled the call in flight. It may have happened: charged like a
    failure, not counted against the dependency, a write's key in flight."""
    core, key = call.run, call.idem_key
    assert isinstance(result.error, killswitch.Cancelled)
    charged = charges.settle(core.budget, hold, "cancelled", call.eff)
    core.events.add("tool_call", tool=call.tool_name, outcome="cancelled", attempt=call.attempt,
                    seconds=round(call.elapsed, 6), usd=_usd(charged), **call.ids)  # fmt: skip
    if call.claimed and key is not None:
        if result.pending is not None:  # abandoned in its thread: it may still write
            idempotency.keep_while(result.pending, core, key)
        else:  # cancelled where it ran: nothing will finish it, its outcome is unknown
            renewals = call.renewals
            assert isinstance(renewals, list)  # a claimed call holds its lease renewal
            idempotency.abandon(core, key, renewals)
    core.events.flush()
    raise core.stamp(result.error.stop)


def _failed(call: Call, hold: Hold, result: Attempt) -> float:
    """Settle and record a failed attempt; the pause before the retry, or raise."""
    core, eff, key, name = call.run, call.eff, call.idem_key, call.tool_name
    error = result.error
    if isinstance(error, NotExecuted):
        # Nothing happened, so no USD; the attempt still costs a call, so a tool that
        # keeps saying so cannot keep a loop going for free.
        charged = charges.settle(core.budget, hold, "not_executed", eff)
        if call.claimed and key is not None:
            core.store_call(core.store.release, key, tenant=core.tenant)
        core.events.add("tool_call", tool=name, outcome="not_executed", attempt=call.attempt,
                        usd=_usd(charged), **call.ids)  # fmt: skip
        core.events.flush()
        raise ToolRejected(
            "tool_error", f"{name} did not run: {error}", tool=name, detail="not_executed"
        )
    charged = charges.settle(core.budget, hold, "timeout" if result.timed_out else "error", eff)
    what = core.redactor.text(
        f"timed out: {_safe.text(error)}"
        if result.timed_out
        else f"raised {_safe.error_text(error)}"
    )
    core.events.add("tool_call", tool=name, outcome="timeout" if result.timed_out else "error",
                    attempt=call.attempt, error=what, seconds=round(call.elapsed, 6),
                    usd=_usd(charged), **call.ids)  # fmt: skip
    if call.claimed and key is not None and result.pending is not None:
        idempotency.keep_while(result.pending, core, key)
    out_of_time = result.timed_out and core.time.remaining() <= 0
    retry = not out_of_time and _may_retry(call)
    if call.claimed and key is not None and not result.timed_out and not retry:
        # A write that raised (and will not be retried) is recorded as failed and never
        # run again under its key; while it is retried the key stays claimed, so no other
        # process replays a failure its retry may yet turn into a success. One that timed
        # out may still be running (abandoned): its key stays in flight.
        core.store_call(core.store.complete, key, {"error": what, "reason": "tool_error"},
                        tenant=core.tenant)  # fmt: skip
    if out_of_time:
        core.events.flush()
        core.time.check()
    if retry:
        backoff = RETRY_BACKOFF * 2.0 ** (call.attempt - 1)
        return min(backoff, max(0.0, core.time.remaining()))
    core.events.flush()
    raise core.stamp(
        Stop("tool_error", name, tool=name, message=what, extra={"attempts": call.attempt})
    )


def _may_retry(call: Call) -> bool:
    """Whether a failed attempt is tried again: within the tool's retries, by corral (not
    the caller), not the breaker's probe (its failure reopened the breaker), with the
    breaker not open and the dependency's retry budget not spent."""
    core, eff = call.run, call.eff
    return (
        call.attempt <= eff.retries
        and not call.external
        and not call.probe
        and breaker.admit(core, eff.breaker, fresh=True)[0] != "open"
        and breaker.retry_allowed(core, eff.breaker)
    )


# -- the outcome ------------------------------------------------------------------------
def _observe(call: Call, result: Attempt) -> Any:
    """The output checked (schema, JSON, hygiene, secrets) and recorded: the write's key
    completed, the read cached, the call's event written."""
    core, eff, key = call.run, call.eff, call.idem_key
    value = result.value
    if type(value) is not str:
        value = _outputs.plain(value)
    # Scrubbing is never observed: every way an output reaches the model or the caller
    # (valid, or let through by observe mode) is scrubbed of the run's secrets, before
    # any cut (hygiene.clean_output). A run without secrets pays nothing for it.
    scrub = core.redactor if core.redactor.has_secrets else None
    try:
        if type(value) is not str:  # models, dataclasses, dates...: JSON as pydantic writes it
            value = _outputs.jsonable(value, eff.max_output_chars)
        observation = output.checked(value, eff, scrub)
    except Exception as raised:  # any shape a tool returns: a problem, never an escape
        if core.recording is not None:
            recording.tool_output(call, recording.invalid_output(core, value), "invalid")
        observation = output.invalid(call, value, _outputs.problem(raised), scrub)
    else:
        rec = core.recording
        if rec is not None:  # for replay (gateway/recording.py), as tool_output keeps it
            steps = rec.steps
            steps.append((call.tool_name, call.call_id, call.digest, call.attempt,
                          call.elapsed, "ok", observation))  # fmt: skip
            if not len(steps) & 63:
                rec.bound()
    if call.claimed and key is not None:
        core.store_call(core.store.complete, key, {"output": observation}, tenant=core.tenant)
    if call.write or eff.cacheable:
        cache.store(call, observation)
    core.last_call = ("executed", call.tool_name, key)
    core.events.add_trusted_and_flush(  # the allow path: every value below is corral's own
        "tool_call",
        tool=call.tool_name,
        outcome="ok",
        attempt=call.attempt,
        args_digest=call.digest,
        usd=str(eff.cost_usd),
        seconds=round(call.elapsed, 6),
        **call.ids,
    )
    return observation
