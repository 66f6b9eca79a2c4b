"""The tool gateway: the single choke point every tool call passes, in this order::

    kill switch → allowlist and registry → arguments and constraints → degrade state
    → loop detection → read cache / idempotency replay → credentials (declared ones present)
    → fit check (no hold) → approval (writes) → kill switch again → budget reservation
    → idempotency claim (writes) → audit the authorization (writes)
    → execute with timeout (bounded retries)
    → output validation and hygiene (made JSON as pydantic would, registered secrets
      scrubbed before the cap) → settle → trace

The flow is written once, as a generator that *yields* what must be waited for
(:class:`Execute`, :class:`Approve`, :class:`Sleep`); ``gateway/drivers.py`` drives it
synchronously or asynchronously. Each check lives in ``guards/``.

Charges follow DESIGN.md: every attempt costs one tool call and the declared
cost (also when it raises or times out, unless ``charge_on_error: false``);
denied, invalid or refused calls are refunded; cache hits and idempotent replays
cost nothing. A tool raising :class:`~corral.NotExecuted` costs one call and no
USD (nothing happened, but a tool that keeps saying so must not loop for free).

Writes: the idempotency key is looked up before approval (a key already done
replays its outcome, nobody is asked again); it is claimed, and the authorization
is written to the audit log, before the tool starts; if either cannot be written
the write is refused, never executed unaudited. The claim's lease is renewed by
this process while the write runs (until the flow ends). An outcome is recorded
after it: the output, or the failure (a write that raised or returned an invalid
output is never run again under its key; a resumed run gets the failure back).
A write abandoned at its deadline may still be running in its thread: its claim
is renewed until that thread ends, then, with no outcome, it becomes ``unknown``
when the lease lapses (settled by the tool's ``reconcile`` hook or an operator);
``NotExecuted`` releases it. See ``gateway/guards/idempotency.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from corral import _safe
from corral.budgets.meter import Hold
from corral.controls import breaker
from corral.exceptions import ConfigError, NotExecuted, Stop, ToolRejected
from corral.gateway import _outputs
from corral.gateway.guards import allowlist as names
from corral.gateway.guards import (
    approval,
    approval_queue,
    arguments,
    cache,
    degrade,
    idempotency,
    killswitch,
)
from corral.gateway.guards import loop_detection as loops
from corral.gateway.hygiene import OutputProblem, Scrubber, clean_output
from corral.gateway.ops import Approve, Attempt, Execute, Flow, Sleep
from corral.gateway.state import Effective, RunState, args_digest, canonical
from corral.record.redact import REDACTED
from corral.stores.leases import Held
from corral.tools import ToolContext, not_local

RETRY_BACKOFF = 0.1
_NO_IDS: Mapping[str, str] = {}


def call_flow(
    core: RunState,
    name: Any,
    raw_args: Any,
    *,
    key: str | None = None,
    call_id: str | None = None,
    external: bool = False,
) -> Flow:
    """Govern one tool call; returns the observation (``external``: the caller executes).

    ``key`` is the caller's idempotency key; ``call_id`` the call's identity in the run
    (the model's tool call), which keys a write when no key is given (see
    ``guards/idempotency.py``). How the call was served is left in ``core.last_call``.
    """
    renewals: list[Held] = []  # the idempotency claim this call holds, renewed meanwhile
    core.last_call = None
    try:
        return (yield from _call_flow(core, name, raw_args, key, call_id, external, renewals))
    except ToolRejected as rejected:
        # What a refusal quotes (the arguments, a tool's own words) reaches the model:
        # scrubbed like everything else it sees.
        rejected.message = core.redactor.text(rejected.message)
        rejected.args = (rejected.message,)
        rejected.tool = core.redactor.secrets_only(rejected.tool)
        raise
    except Stop as stop:
        core.scrub_stop(stop)
        raise
    finally:
        for held in renewals:  # the outcome is stored, the key released, or the flow ended
            held.release()


def _call_flow(
    core: RunState,
    name: Any,
    raw_args: Any,
    key: str | None,
    call_id: str | None,
    external: bool,
    renewals: list[Held],
) -> Flow:
    # The call's identity goes on its events (and so on its span, gen_ai.tool.call.id); it
    # is the caller's text, so it is scrubbed like anything else recorded.
    ids = _NO_IDS if call_id is None else {"call_id": core.redactor.text(call_id)}
    core.ensure_running()
    core.time.check()
    if isinstance(name, str) and type(name) is not str:
        # A str subclass could hash or compare one way for the registry and another for
        # the allowlist; the gateway only ever looks up a plain copy of its text.
        name = str.__str__(name)
    tool_name = name if isinstance(name, str) else repr(name)
    known = isinstance(name, str) and name in core.tools
    eff = core.effective(name) if known else None
    # An unknown name has no effect to judge: only stop_all refuses it here, else the
    # registry check below does.
    killswitch.check(core, tool_name, eff)
    tool = names.resolve(core, name)
    if tool.described and not external:  # no function: only the caller can execute it
        raise ConfigError(not_local(tool.name))
    if eff is None:  # resolve refuses names no code registered: for the type checker
        eff = core.effective(tool.name)
    args = arguments.validate(core, eff, raw_args)
    try:
        text = canonical(args)
    except (RecursionError, ValueError, TypeError) as unwritable:  # too deep, a huge int, ...
        problem = f"arguments cannot be written as JSON: {_safe.text(unwritable)}"
        arguments.refuse(core, eff, [problem])
    loops.check(core, tool.name, text)
    probe = degrade.check(core, tool.name, eff.breaker)

    write = eff.effect == "write"
    # The canonical digest keys the cache, approvals and idempotency, and every outcome
    # is audited with it.
    digest = args_digest(args, text=text)
    if eff.cacheable:
        cached = cache.lookup(core, eff, digest)
        if not cache.is_miss(cached):
            core.events.add(
                "tool_call", tool=tool.name, outcome="cached", args_digest=digest, **ids
            )
            core.events.flush()
            core.last_call = ("cached", tool.name, None)
            # Scrubbed when cached; again of any secret the run resolved since.
            return _rescrub(core, cached) if core.redactor.has_secrets else cached

    idem_key = idempotency.key_for(core, eff, args, digest, key, call_id) if write else None
    charge = eff.charge
    if idem_key is not None:
        # Before the fit check and approval: a write already done is replayed for free,
        # without asking again; a key reused with other arguments is refused here.
        done = idempotency.lookup(core, eff, idem_key, digest, args)
        if done is not None:
            core.events.add("tool_call", tool=tool.name, outcome="replayed", key=idem_key, **ids)
            core.events.flush()
            core.last_call = ("replayed", tool.name, idem_key)
            return idempotency.replay(core, eff, idem_key, done)

    # Credentials are resolved before anything is held, claimed or asked for: a secret
    # provider that fails, or a credential the tenant lacks, refuses the call with nothing
    # to undo, and no human is asked to approve a write that could not run.
    creds: Mapping[str, str] = {}
    if tool.context_param is not None or eff.credentials:
        creds = _credentials(core, tool.name, eff.credentials)

    if eff.require_approval and core.observes("approvals"):
        # Named in the policy (`mode: {approvals: observe}`): the write goes ahead unapproved,
        # recorded as the denial it would have met.
        core.observed(
            Stop(
                "approval_denied",
                tool.name,
                tool=tool.name,
                message=f"{tool.name} ran without the approval it needs (approvals observed)",
            )
        )
    elif eff.require_approval:
        # Check the fit before anyone is asked to approve; nothing is held while waiting.
        core.budget.fits(charge)
        req = approval.request(core, eff, args, digest, key=idem_key, call_id=call_id)
        core.events.flush()
        if core.approver is None:
            # The store's queue: decided by another process, consumed once (controls/approvals.py).
            yield from approval_queue.wait(core, eff, req)
        else:
            started = core.time.now()
            try:
                answer = yield Approve(req)
            except ConfigError:
                raise
            except Exception as failure:
                approval.unreachable(core, req, failure, core.time.now() - started)
            approval.decide(core, req, answer, core.time.now() - started)
        killswitch.check(core, tool.name, eff)
        if not probe:
            # The wait may have been long: a breaker that opened meanwhile refuses the write
            # now, rather than letting it hit the failing dependency. (A call that is the
            # half-open probe already holds the fleet's one probe slot.)
            probe = degrade.check(core, tool.name, eff.breaker)

    attempt = 0
    claimed = False
    while True:
        attempt += 1
        core.time.check()
        hold = core.budget.reserve(charge)
        first_claim = write and not claimed and idem_key is not None
        if first_claim and idem_key is not None:
            try:
                stored = yield from idempotency.claim(core, eff, idem_key, digest, args)
            except BaseException:
                core.budget.refund(hold)
                raise
            if stored is not None:
                core.budget.refund(hold)
                core.events.add(
                    "tool_call", tool=tool.name, outcome="replayed", key=idem_key, **ids
                )
                core.events.flush()
                core.last_call = ("replayed", tool.name, idem_key)
                return idempotency.replay(core, eff, idem_key, stored)
            claimed = True
            renewals.append(idempotency.hold(core, idem_key))
        timeout = min(eff.timeout, core.time.remaining())
        if timeout <= 0:
            # The run's time ran out since the check above: the call is not started, so
            # nothing is charged and the write's key is free again.
            core.budget.refund(hold)
            if first_claim and idem_key is not None:
                core.store_call(core.store.release, idem_key, tenant=core.tenant)
            core.events.flush()
            core.time.check()
        if write:
            cache.clear(core)  # a write may change what any read returns, also when it fails
            _audit_authorization(core, tool.name, attempt, digest, idem_key, hold, first_claim)
        ctx = None
        if tool.context_param is not None:
            ctx = ToolContext(
                tool=tool.name,
                run_id=core.id,
                tenant=core.tenant,
                agent=core.agent,
                idempotency_key=idem_key,
                attempt=attempt,
                deadline=core.time.now() + timeout,
                credentials=creds,
                clock=core.clock,
            )
        started = core.time.now()
        watch = killswitch.watch(core, tool.name)
        result: Attempt = yield Execute(eff, args, ctx, timeout, idem_key, watch)
        elapsed = core.time.now() - started
        if isinstance(result.error, killswitch.Cancelled):
            # A stop_all switch cancelled the call in flight. It may have happened: charged
            # like a failure, not counted against the dependency, a write's key in flight.
            core.budget.settle(hold, charge if eff.charge_on_error else eff.call_only)
            core.events.add("tool_call", tool=tool.name, outcome="cancelled", attempt=attempt,
                       seconds=round(elapsed, 6), **ids)  # fmt: skip
            if claimed and idem_key is not None:
                if result.pending is not None:  # abandoned in its thread: it may still write
                    idempotency.keep_while(result.pending, core, idem_key)
                else:  # cancelled where it ran: nothing will finish it, its outcome is unknown
                    idempotency.abandon(core, idem_key, renewals)
            core.events.flush()
            raise core.stamp(result.error.stop)
        if not isinstance(result.error, NotExecuted):
            breaker.record(core, eff.breaker, result.ok, probe=probe)
        if result.ok:
            core.budget.settle(hold, charge)
            break
        error = result.error
        if isinstance(error, NotExecuted):
            # Nothing happened, so no USD; the attempt still costs a call, so a tool that
            # keeps saying so cannot keep a loop going for free.
            core.budget.settle(hold, eff.call_only)
            if claimed and idem_key is not None:
                core.store_call(core.store.release, idem_key, tenant=core.tenant)
            core.events.add(
                "tool_call", tool=tool.name, outcome="not_executed", attempt=attempt, **ids
            )
            core.events.flush()
            raise ToolRejected(
                "tool_error",
                f"{tool.name} did not run: {error}",
                tool=tool.name,
                detail="not_executed",
            )
        core.budget.settle(hold, charge if eff.charge_on_error else eff.call_only)
        what = core.redactor.text(
            f"timed out: {_safe.text(error)}"
            if result.timed_out
            else f"raised {_safe.error_text(error)}"
        )
        core.events.add(
            "tool_call",
            tool=tool.name,
            outcome="timeout" if result.timed_out else "error",
            attempt=attempt,
            error=what,
            seconds=round(elapsed, 6),
            **ids,
        )
        if claimed and idem_key is not None and result.pending is not None:
            idempotency.keep_while(result.pending, core, idem_key)
        out_of_time = result.timed_out and core.time.remaining() <= 0
        retry = (
            not out_of_time
            and attempt <= eff.retries
            and not external
            and not probe  # a failed probe reopened the breaker: no retries
            and breaker.admit(core, eff.breaker)[0] != "open"
            and breaker.retry_allowed(core, eff.breaker)
        )
        if claimed and idem_key is not None and not result.timed_out and not retry:
            # A write that raised (and will not be retried) is recorded as failed and never
            # run again under its key; while it is retried the key stays claimed, so no other
            # process replays a failure its retry may yet turn into a success. One that timed
            # out may still be running (abandoned): its key stays in flight.
            core.store_call(
                core.store.complete,
                idem_key,
                {"error": what, "reason": "tool_error"},
                tenant=core.tenant,
            )
        if out_of_time:
            core.events.flush()
            core.time.check()
        if retry:
            pause = min(RETRY_BACKOFF * 2 ** (attempt - 1), max(0.0, core.time.remaining()))
            if pause > 0:
                yield Sleep(pause)
            continue
        core.events.flush()
        raise core.stamp(
            Stop("tool_error", tool.name, tool=tool.name, message=what, extra={"attempts": attempt})
        )

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
        problems = eff.tool.validate_output(value, eff.output_schema)
        if problems:
            raise OutputProblem("schema", "; ".join(problems))
        observation = clean_output(
            value,
            strip_html=eff.strip_html,
            max_chars=eff.max_output_chars,
            scrub=scrub,
            cut_json=eff.output_schema is None,  # a validated value is never cut
        )
        if type(observation) is not str or "\0" in observation:
            observation = _outputs.as_json(observation)
    except Exception as raised:  # any shape a tool returns: a problem, never an escape
        exc = _outputs.problem(raised)
        problem = core.redactor.text(str(exc))  # a schema problem quotes the output
        core.events.add(
            "tool_call",
            tool=tool.name,
            outcome="invalid_output",
            attempt=attempt,
            problem=problem,
            **ids,
        )
        stop = Stop(
            "invalid_tool_output",
            tool.name,
            tool=tool.name,
            message=problem,
            extra={"problem": exc.detail},
        )
        if claimed and idem_key is not None and not core.observes("output"):
            # The side effect happened: record it, so a resumed run does not do it again.
            core.store_call(
                core.store.complete,
                idem_key,
                {"error": problem, "reason": "invalid_tool_output"},
                tenant=core.tenant,
            )
        core.events.flush()
        core.deny(stop, "output")
        observation = _let_through(value, exc, eff, scrub)
    if claimed and idem_key is not None:
        core.store_call(core.store.complete, idem_key, {"output": observation}, tenant=core.tenant)
    if write or eff.cacheable:
        cache.store(core, eff, digest, observation)
    core.last_call = ("executed", tool.name, idem_key)
    core.events.add_trusted_and_flush(  # the allow path: every value below is corral's own
        "tool_call",
        tool=tool.name,
        outcome="ok",
        attempt=attempt,
        args_digest=digest,
        usd=str(eff.cost_usd),
        seconds=round(elapsed, 6),
        **ids,
    )
    return observation


def _rescrub(core: RunState, value: Any) -> Any:
    """An observation kept from earlier, scrubbed of the run's secrets as they are now."""
    try:
        return core.redactor.secrets_only(value)
    except ValueError:  # nested too deep to scrub: not shown at all
        return REDACTED


def _let_through(value: Any, found: OutputProblem, eff: Effective, scrub: Scrubber | None) -> Any:
    """What the model sees of an output that failed its checks, in observe mode: the output
    as plain JSON when it is one (a schema or size problem), else its text form; scrubbed
    all the same (before any cut), capped, and never raising."""
    if found.detail in ("schema", "output_too_large"):
        try:
            shown = _outputs.as_json(_outputs.plain(value))
            return shown if scrub is None else scrub.secrets_only(shown)
        except Exception:  # not JSON after all, or too deep to scrub: shown as text below
            pass
    # Read well past the cap, so that the cut below (after scrubbing) is what bounds it and
    # no secret straddles a cut made before the scrubbing.
    raw = _safe.text(value, 2 * eff.max_output_chars + 4096)
    return clean_output(raw, strip_html=False, max_chars=eff.max_output_chars, scrub=scrub)


def _credentials(core: RunState, tool: str, needed: tuple[str, ...]) -> Mapping[str, str]:
    """The tool's credentials, or the run's stop when one it needs is missing (never
    observed: a tool does not run without what it needs)."""
    try:
        return core.credentials.require(tool, needed)
    except Stop as stop:
        if stop.info.extra.get("why") == "missing_credential":
            core.events.add("denied", tool=tool, why="missing_credential")
        core.events.flush()
        raise core.stamp(stop) from None


def _audit_authorization(
    core: RunState,
    tool: str,
    attempt: int,
    digest: str,
    key: str | None,
    hold: Hold,
    release: bool,
) -> None:
    """Write a write's authorization to the audit log before it runs; if the log cannot be
    written, refuse the write (refunded; ``release``: its key, just claimed, released)
    instead of running it unaudited."""
    core.events.add("authorized", tool=tool, attempt=attempt, args_digest=digest, key=key)
    try:
        core.events.flush()
    except Stop:
        with contextlib.suppress(Stop):
            core.budget.refund(hold)
            if release and key is not None:
                core.store_call(core.store.release, key, tenant=core.tenant)
        raise
