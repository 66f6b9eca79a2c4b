"""The tool gateway: the single choke point every tool call passes, in this order::

    kill switch → allowlist and registry → arguments and constraints → loop detection
    → degrade state → read cache / idempotency replay → credentials (declared ones present)
    → fit check (no hold) → approval (writes) → kill switch again → budget reservation
    → idempotency claim (writes) → audit the authorization (writes)
    → execute with timeout (bounded retries)
    → output validation and hygiene (made JSON as pydantic would, registered secrets
      scrubbed before the cap) → settle → trace

The order is :func:`_call_flow`'s, one named step per line; each check lives in
``guards/`` (one module per guard), the end of an attempt (settlement, output checks, a
failure retried or stopped) in :mod:`corral.gateway.attempts`, the per-call state in
:class:`~corral.gateway.call.Call`, the cost of each outcome in
:mod:`corral.gateway.charges`. The flow is a generator that *yields* what must be waited
for (:class:`~corral.gateway.ops.Execute`, :class:`~corral.gateway.ops.Approve`,
:class:`~corral.gateway.ops.Sleep`):
``gateway/drivers.py`` drives it synchronously or asynchronously, and knows nothing of
who asked (``Run.call``, the loop, ``Run.authorize``).

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
from collections.abc import Generator, Mapping
from typing import Any

from corral import _safe
from corral.budgets.meter import Hold
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway import charges
from corral.gateway.attempts import Retry, attempted
from corral.gateway.call import Call
from corral.gateway.canonical import args_digest, canonical
from corral.gateway.guards import (
    allowlist,
    approval,
    approval_queue,
    arguments,
    cache,
    degrade,
    idempotency,
    killswitch,
    loop_detection,
)
from corral.gateway.ops import Approve, Attempt, Execute, Flow, Sleep
from corral.gateway.state import RunState
from corral.record.redact import REDACTED
from corral.tools import ToolContext, not_local

_NO_IDS: Mapping[str, str] = {}
#: What a step returns when it did not serve the call from memory.
NOT_SERVED: Any = object()


def call_flow(
    core: RunState,
    name: Any,
    raw_args: Any,
    *,
    key: str | None = None,
    call_id: str | None = None,
    external: bool = False,
    attributes: Mapping[str, str] | None = None,
) -> Flow:
    """Govern one tool call; returns the observation (``external``: the caller executes).

    ``key`` is the caller's idempotency key; ``call_id`` the call's identity in the run
    (the model's tool call), which keys a write when no key is given (see
    ``guards/idempotency.py``); ``attributes`` go on the call's events (``attributes``) and
    so on its ``execute_tool`` span. How the call was served is left in ``core.last_call``.
    """
    call = Call(core, name, raw_args, key, call_id, external, attributes)
    core.last_call = None
    try:
        return (yield from _call_flow(call))
    except (Stop, ToolRejected) as refusal:
        core.scrub_refusal(refusal)
        raise
    finally:
        for held in call.renewals:  # the outcome is stored, the key released, or ended
            held.release()


def _call_flow(call: Call) -> Flow:
    """The chain, in DESIGN.md's order: each step is a named function below."""
    _admit(call)  # kill switch, allowlist and registry, arguments, loop detection, degrade
    core, eff = call.run, call.eff
    if eff.cacheable or call.write:
        served = from_memory(call)  # read cache, idempotency replay
        if served is not NOT_SERVED:
            return served
    if call.tool.context_param is not None or eff.credentials:
        _credentials(call)  # before anything is held, claimed or asked for
    if eff.require_approval:
        yield from _approve(call)  # fit check, approval, kill switch and breaker again
    while True:  # the attempts: reserve, claim, audit, execute, settle; retry what may be
        call.attempt += 1
        core.time.check()
        hold = core.budget.reserve(eff.charge)
        first_claim = call.write and not call.claimed and call.idem_key is not None
        if first_claim:
            stored = yield from _claim(call, hold)
            if stored is not None:  # its outcome was stored meanwhile: replayed
                return _replayed(call, stored)
        timeout = start(call, hold, first_claim)
        started = core.time.now()
        watch = killswitch.watch(core, call.tool_name)
        ctx = None if call.tool.context_param is None else context(call, timeout)
        result: Attempt = yield Execute(eff, call.args, ctx, timeout, call.idem_key, watch)
        ended = attempted(call, hold, started, result)  # settled, checked, recorded
        if type(ended) is not Retry:
            return ended
        if ended.pause > 0:
            yield Sleep(ended.pause)


# -- admission: the checks before anything is held -------------------------------------
def _admit(call: Call) -> None:
    core = call.run
    identify(call)
    core.ensure_running()
    core.time.check()
    name = call.name
    if isinstance(name, str) and type(name) is not str:
        # A str subclass could hash or compare one way for the registry and another for
        # the allowlist; the gateway only ever looks up a plain copy of its text.
        name = call.name = str.__str__(name)
    call.tool_name = name if isinstance(name, str) else repr(name)
    known = isinstance(name, str) and name in core.tools
    eff = core.effective(name) if known else None
    # An unknown name has no effect to judge: only stop_all refuses it here, else the
    # registry check below does.
    killswitch.check(core, call.tool_name, eff)
    tool = call.tool = allowlist.resolve(core, name)
    if tool.described and not call.external:  # no function: only the caller can execute it
        raise ConfigError(not_local(tool.name))
    if eff is None:  # resolve refuses names no code registered: for the type checker
        eff = core.effective(tool.name)
    call.eff = eff
    call.write = eff.effect == "write"
    vet(call)


def identify(call: Call) -> None:
    """The call's identity and the caller's attributes, for its events (and so its span,
    ``gen_ai.tool.call.id``): the caller's text, scrubbed like anything else recorded."""
    if call.call_id is not None:
        call.ids = {"call_id": call.run.redactor.text(call.call_id)}
    if call.attributes:
        shown = {k: call.run.redactor.text(v) for k, v in call.attributes.items()}
        call.ids = {**call.ids, "attributes": shown}


def vet(call: Call) -> None:
    """The checks of a known, allowed tool's call after the kill switch: arguments and
    constraints, loop detection, degrade state; sets the call's canonical arguments and
    their digest."""
    core, eff = call.run, call.eff
    args = call.args = arguments.validate(call)
    try:
        text = call.text = canonical(args)
    except (RecursionError, ValueError, TypeError) as unwritable:  # too deep, a huge int, ...
        problem = f"arguments cannot be written as JSON: {_safe.text(unwritable)}"
        arguments.refuse(core, eff, [problem])
    loop_detection.check(call)
    call.probe = degrade.check(call)
    # The canonical digest keys the cache, approvals and idempotency, and every outcome
    # is audited with it.
    call.digest = args_digest(args, text=text)


def from_memory(call: Call) -> Any:
    """The call served from the run's read cache, or a write's outcome replayed from its
    idempotency key (both free); else :data:`NOT_SERVED`."""
    core, eff, name = call.run, call.eff, call.tool_name
    if eff.cacheable:
        cached = cache.lookup(call)
        if not cache.is_miss(cached):
            core.events.add("tool_call", tool=name, outcome="cached", args_digest=call.digest,
                            **call.ids)  # fmt: skip
            core.events.flush()
            core.last_call = ("cached", name, None)
            # Scrubbed when cached; again of any secret the run resolved since.
            return _rescrub(core, cached) if core.redactor.has_secrets else cached
    if not call.write:
        return NOT_SERVED
    key = call.idem_key = idempotency.key_for(call)
    if key is None:
        return NOT_SERVED
    # Before the fit check and approval: a write already done is replayed for free,
    # without asking again; a key reused with other arguments is refused here.
    done = idempotency.lookup(call, key)
    return NOT_SERVED if done is None else _replayed(call, done)


def _replayed(call: Call, stored: Mapping[str, Any]) -> Any:
    """The stored outcome of the call's write key, replayed for free."""
    core, key = call.run, call.idem_key
    assert key is not None
    core.events.add("tool_call", tool=call.tool_name, outcome="replayed", key=key, **call.ids)
    core.events.flush()
    core.last_call = ("replayed", call.tool_name, key)
    return idempotency.replay(core, call.eff, key, stored)


def _credentials(call: Call) -> None:
    """Resolve the tool's credentials before anything is held, claimed or asked for: a
    secret provider that fails, or a credential the tenant lacks, refuses the call with
    nothing to undo, and no human is asked to approve a write that could not run (never
    observed: a tool does not run without what it needs)."""
    eff, core = call.eff, call.run
    try:
        call.credentials = core.credentials.require(call.tool_name, eff.credentials)
    except Stop as stop:
        if stop.info.extra.get("why") == "missing_credential":
            core.events.add("denied", tool=call.tool_name, why="missing_credential")
        core.events.flush()
        raise core.stamp(stop) from None


def _approve(call: Call) -> Generator[Any, Any, None]:
    """A write that needs approval waits for one (nothing held meanwhile); a call that
    waited meets the kill switch and its breaker again."""
    core, eff, name = call.run, call.eff, call.tool_name
    if core.observes("approvals"):
        # Named in the policy (`mode: {approvals: observe}`): the write goes ahead unapproved,
        # recorded as the denial it would have met.
        core.observed(
            Stop(
                "approval_denied",
                name,
                tool=name,
                message=f"{name} ran without the approval it needs (approvals observed)",
            )
        )
        return
    core.budget.fits(eff.charge)  # check the fit before anyone is asked to approve
    req = approval.request(call)
    core.events.flush()
    if core.approver is None:
        # The store's queue: decided by another process, consumed once.
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
    killswitch.check(core, name, eff)
    if not call.probe:
        # The wait may have been long: a breaker that opened meanwhile refuses the write
        # now, rather than letting it hit the failing dependency. (A call that is the
        # half-open probe already holds the fleet's one probe slot.)
        call.probe = degrade.check(call, fresh=True)


# -- attempts ---------------------------------------------------------------------------
def _claim(call: Call, hold: Hold) -> Generator[Any, Any, Mapping[str, Any] | None]:
    """Claim the write's key before it starts; its stored outcome when it was done
    meanwhile (the attempt refunded)."""
    core, eff, key = call.run, call.eff, call.idem_key
    assert key is not None
    try:
        stored = yield from idempotency.claim(call, key)
    except BaseException:
        charges.settle(core.budget, hold, "not_started", eff)
        raise
    if stored is not None:
        charges.settle(core.budget, hold, "not_started", eff)
        return stored
    call.claimed = True
    call.renewals = [idempotency.hold(core, key)]
    return None


def start(call: Call, hold: Hold, first_claim: bool) -> float:
    """Ready the attempt to start: the time it may take, a write's cache cleared and its
    authorization audited. Not started when the run's time ran out since it was checked
    (refunded, a key just claimed released)."""
    core, eff = call.run, call.eff
    timeout = min(eff.timeout, core.time.remaining())
    if timeout <= 0:
        charges.settle(core.budget, hold, "not_started", eff)
        if first_claim and call.idem_key is not None:
            core.store_call(core.store.release, call.idem_key, tenant=core.tenant)
        core.events.flush()
        core.time.check()
    if call.write:
        cache.clear(core)  # a write may change what any read returns, also when it fails
        _audit_authorization(call, hold, first_claim)
    return timeout


def context(call: Call, timeout: float) -> ToolContext:
    """The :class:`~corral.ToolContext` for a tool that takes one."""
    core = call.run
    return ToolContext(
        tool=call.tool_name,
        run_id=core.id,
        tenant=core.tenant,
        agent=core.agent,
        idempotency_key=call.idem_key,
        attempt=call.attempt,
        deadline=core.time.now() + timeout,
        credentials=call.credentials,
        clock=core.clock,
    )


def _audit_authorization(call: Call, hold: Hold, release: bool) -> None:
    """Write a write's authorization to the audit log before it runs; if the log cannot be
    written, refuse the write (refunded; ``release``: its key, just claimed, released)
    instead of running it unaudited."""
    core, key = call.run, call.idem_key
    core.events.add("authorized", tool=call.tool_name, attempt=call.attempt,
                    args_digest=call.digest, key=key)  # fmt: skip
    try:
        core.events.flush()
    except Stop:
        with contextlib.suppress(Stop):
            charges.settle(core.budget, hold, "not_started", call.eff)
            if release and key is not None:
                core.store_call(core.store.release, key, tenant=core.tenant)
        raise


def _rescrub(core: RunState, value: Any) -> Any:
    """An observation kept from earlier, scrubbed of the run's secrets as they are now."""
    try:
        return core.redactor.secrets_only(value)
    except ValueError:  # nested too deep to scrub: not shown at all
        return REDACTED
