"""Idempotency: a write happens at most once per key.

The key is the caller's, else derived from the fields the tool declares
(``idempotency_key_from``, scoped to the tenant, across runs), else from the run
and the call's identity (``call_id``: in corral's loop, the turn and the place in
the turn of the model's tool call) with the argument digest — so a resumed run that
makes the same call at the same point replays it, while an identical call in a new
turn is a new write (asked for approval again) — else from run, tool and argument
digest (protecting retries and resumes within one run; ``Run.call`` without a
``call_id``).

The life of a key, in the store (see ``docs/writes.md``):

- **looked up** before approval (:func:`lookup`): a key already done replays its
  outcome without asking anyone again; one used with other arguments is refused, and
  one whose outcome is unknown, for a tool with no ``reconcile`` hook, stops the run
  (``outcome_unknown``) before anyone is asked;
- **claimed** before the side effect starts (:func:`claim`), durably, under a lease
  (the run's renewer's ``lease``, :data:`corral.stores.leases.LEASE_SECONDS` by default)
  that this process renews through the run's renewer (``services.renewer``, see
  :mod:`corral.gateway.services`) while the write runs (:func:`hold`);
- **completed** with the outcome after it, or **released** when the tool raised
  :class:`~corral.NotExecuted`.

A claim met *in flight* (another live process runs it) is waited for, polling, up to
the tool's timeout capped by the run's time: done in time, its outcome is replayed;
else the run stops ``tool_error`` (why ``in_flight``, retryable). A claim whose
lease lapsed with no outcome is *unknown*: its process died, and whether the side
effect happened is not known. It is never run again on a guess: the tool's
``reconcile`` hook settles it (:func:`reconcile`), else the run stops ``tool_error``
(why ``outcome_unknown``, not retryable) until an operator settles it with
``corral idempotency resolve``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from corral.controls.breaker import wall
from corral.exceptions import NotExecuted, Stop, ToolRejected
from corral.gateway._jsonable import jsonable
from corral.gateway.guards.cache import copy_of
from corral.gateway.guards.denial import count_mistake
from corral.gateway.hygiene import clean_output
from corral.gateway.ops import Sleep
from corral.gateway.state import args_digest
from corral.record.redact import REDACTED
from corral.stores import leases
from corral.tools import ToolContext

if TYPE_CHECKING:
    from corral.gateway.call import Call
    from corral.gateway.state import Effective, RunState

#: The first pause while waiting for a claim in flight; it doubles up to :data:`POLL_MAX`.
POLL_FIRST = 0.02
POLL_MAX = 0.5
#: How often a run may lose the race to settle an unknown claim before it gives up.
SETTLE_RACES = 3

Reconcile = Callable[[str, Mapping[str, Any], ToolContext], Any]
"""A tool's ``reconcile`` hook: ``(key, arguments, ctx)`` → the outcome, or raises."""


def key_for(call: Call) -> str:
    """The idempotency key of a write (see the module docstring for the order)."""
    core, eff, args, digest = call.run, call.eff, call.args, call.digest
    given, call_id = call.key, call.call_id
    if given:
        return f"caller:{eff.tool.name}:{given}"
    fields = eff.tool.idempotency_key_from
    if fields:
        picked = {f: args.get(f) for f in fields}
        return f"fields:{eff.tool.name}:{args_digest(picked)}"
    if call_id:
        # The call's identity is hashed with the arguments: one identity with other
        # arguments is another call (a resumed model that chose differently), not a misuse.
        ident = args_digest({"call": call_id, "args": digest})
        return f"call:{core.id}:{eff.tool.name}:{ident}"
    return f"run:{core.id}:{eff.tool.name}:{digest}"


def lookup(call: Call, key: str) -> Mapping[str, Any] | None:
    """Before approval: the outcome of ``key`` if it is done (to replay), else ``None``.

    A key used with other arguments is refused here, before anyone is asked; so is an
    unknown claim nothing but an operator can settle. An unknown claim whose tool has a
    ``reconcile`` hook is reconciled first: a write its process did before dying is
    replayed without a second approval (one the hook finds not done is approved, then
    taken over).
    """
    core, eff, digest, args = call.run, call.eff, call.digest, call.args
    record = core.store_call(core.store.lookup_claim, key, tenant=core.tenant, now=wall(core))
    if record is None:
        return None
    if record.digest != digest:
        _mismatch(core, eff, key)
    if record.status == "unknown" and eff.tool.reconcile is None:
        # Nothing but an operator can settle it: stop now rather than ask someone to
        # approve a write that the claim would then refuse.
        core.events.add("tool_call", tool=eff.tool.name, outcome="outcome_unknown", key=key)
        raise _conflict(core, eff, key, "unknown")
    if record.status == "unknown":
        settled = reconcile(core, eff, key, args, take_over=False)
        return settled or None
    return record.outcome if record.status == "done" else None


def claim(call: Call, key: str) -> Generator[Any, Any, Mapping[str, Any] | None]:
    """Claim ``key``: ``None`` to go ahead (this call holds it), or a stored outcome to replay.

    A generator: it yields :class:`~corral.gateway.chain.Sleep` while it waits for a claim in
    flight. Raises the run's :class:`Stop` for a claim still in flight or unknown.
    """

    core, eff, digest, args = call.run, call.eff, call.digest, call.args
    name = eff.tool.name
    started = core.time.now()
    wait_until = started + max(0.0, min(eff.timeout, core.time.remaining()))
    pause = POLL_FIRST
    races = 0
    while True:
        result = core.store_call(
            core.store.claim,
            key,
            digest,
            tenant=core.tenant,
            # Wall time: leases are compared by other processes and machines (a run's own
            # monotonic clock means nothing there).
            now=wall(core),
            lease=core.services.renewer.lease,
            tool=name,
        )
        if result.status == "claimed":
            return None
        if result.status == "done":
            return result.outcome
        if result.status == "mismatch":
            _mismatch(core, eff, key)
        if result.status == "in_flight":
            left = wait_until - core.time.now()
            if left <= 0:
                raise _conflict(core, eff, key, "in_flight", waited=core.time.now() - started)
            yield Sleep(min(pause, left))
            pause = min(pause * 2, POLL_MAX)
            continue
        # unknown: its process died before recording an outcome
        settled = reconcile(core, eff, key, args)
        if settled is not None:
            return None if settled is TAKEN_OVER else settled
        races += 1  # another process settled it first: look again
        if races >= SETTLE_RACES:
            raise _conflict(core, eff, key, "in_flight", waited=core.time.now() - started)


TAKEN_OVER: Mapping[str, Any] = {}
"""What :func:`reconcile` returns when this call took an unknown claim over to run it."""


def reconcile(
    core: RunState, eff: Effective, key: str, args: Mapping[str, Any], *, take_over: bool = True
) -> Mapping[str, Any] | None:
    """Settle the unknown claim of ``key`` with the tool's ``reconcile`` hook.

    Returns the outcome the hook found (stored, to replay), :data:`TAKEN_OVER` when the
    hook says the side effect did not happen (this call now holds the claim and runs
    the tool), or ``None`` when another process settled the claim first. Raises the
    run's ``outcome_unknown`` stop when the tool has no hook or the hook cannot tell.
    Only one process settles a claim: the store's ``resolve_claim`` is atomic. With
    ``take_over=False`` (before approval) a hook saying "not done" leaves the claim
    unknown and returns ``None``: nothing may run yet.
    """
    name = eff.tool.name
    hook = eff.tool.reconcile
    if hook is None:
        core.events.add("tool_call", tool=name, outcome="outcome_unknown", key=key)
        raise _conflict(core, eff, key, "unknown")
    ctx = ToolContext(
        tool=name,
        run_id=core.id,
        tenant=core.tenant,
        agent=core.agent,
        idempotency_key=key,
        deadline=core.time.now() + max(0.0, min(eff.timeout, core.time.remaining())),
        credentials=core.credentials.get(name, {}),
        clock=core.clock,
    )
    try:
        found = hook(key, dict(args), ctx)
        scrub = core.redactor if core.redactor.has_secrets else None  # the hook has the creds
        found = jsonable(found, eff.max_output_chars)  # as pydantic writes it, like a tool's
        outcome = {
            "output": clean_output(
                found,
                strip_html=eff.strip_html,
                max_chars=eff.max_output_chars,
                scrub=scrub,
                cut_json=eff.output_schema is None,
            )
        }
    except NotExecuted:
        if not take_over:
            return None
        taken = core.store_call(
            core.store.resolve_claim,
            key,
            tenant=core.tenant,
            now=wall(core),
            outcome=None,
            lease=core.services.renewer.lease,
        )
        if not taken:
            return None
        core.events.add("tool_call", tool=name, outcome="reconciled", found="not_executed", key=key)
        return TAKEN_OVER
    except Exception as exc:  # the hook failed, or its outcome is unusable (OutputProblem)
        what = core.redactor.text(f"{type(exc).__name__}: {exc}")
        core.events.add("tool_call", tool=name, outcome="outcome_unknown", key=key, error=what)
        raise _conflict(core, eff, key, "unknown", hook_error=what) from exc
    stored = core.store_call(
        core.store.resolve_claim, key, tenant=core.tenant, now=wall(core), outcome=outcome
    )
    if not stored:
        return None
    core.events.add("tool_call", tool=name, outcome="reconciled", found="done", key=key)
    return outcome


def hold(core: RunState, key: str) -> leases.Held:
    """Renew the claim of ``key`` from this process until the handle is released."""
    store, tenant = core.store, core.tenant

    def renew(_now: float) -> None:
        # The run's wall time, not the renewer's: a run on a virtual clock compares leases
        # in that clock.
        store.renew_claim(key, tenant=tenant, now=wall(core), lease=core.services.renewer.lease)

    return core.services.renewer.hold(renew)


def abandon(core: RunState, key: str, renewals: list[leases.Held]) -> None:
    """Give up a claim whose call was cancelled where it ran: it may have happened, and
    nothing will finish it, so its lease ends now and it is ``unknown`` at once (a
    ``reconcile`` hook or an operator settles it), instead of after a lease of waiting."""
    for held in renewals:
        held.release()
    renewals.clear()
    core.store_call(core.store.renew_claim, key, tenant=core.tenant, now=wall(core), lease=0.0)


def keep_while(pending: Future[Any], core: RunState, key: str) -> None:
    """Keep renewing ``key`` while an abandoned attempt still runs in its thread.

    Python cannot stop the thread: while it runs the write may still happen, so the
    claim stays in flight; once it ends the renewal stops and, if no outcome was
    recorded meanwhile, the claim becomes ``unknown`` when its lease lapses.
    """
    held = hold(core, key)
    pending.add_done_callback(lambda _: held.release())


def replay(core: RunState, eff: Effective, key: str, stored: Mapping[str, Any]) -> Any:
    """The stored outcome of an earlier call with ``key``: its output, or its failure again."""
    if "output" in stored:
        # Stored scrubbed; scrubbed again of this run's secrets, which may differ.
        try:
            return copy_of(core.redactor.secrets_only(stored["output"]))
        except ValueError:  # nested too deep to scrub: not shown at all
            return REDACTED
    name = eff.tool.name
    reason = stored.get("reason", "tool_error")
    raise core.stamp(
        Stop(
            reason if reason in ("tool_error", "invalid_tool_output") else "tool_error",
            name,
            tool=name,
            retryable=False,
            message=f"{name}: an earlier call with idempotency key {key!r} failed "
            f"({stored.get('error', 'no detail')}); it is not run again",
            extra={"why": "replayed", "idempotency": "replayed"},
        )
    )


def _mismatch(core: RunState, eff: Effective, key: str) -> None:
    name = eff.tool.name
    message = f"{name}: idempotency key {key!r} was already used with different arguments"
    core.events.add("denied", tool=name, why="idempotency_mismatch", count=core.invalid_calls + 1)
    if count_mistake(core):  # handed back, but bounded like the model's other mistakes
        raise core.stamp(
            Stop(
                "tool_denied",
                name,
                tool=name,
                message=message,
                extra={"why": "idempotency_mismatch"},
            )
        )
    raise ToolRejected("tool_denied", message, tool=name, detail="idempotency_mismatch")


def _conflict(
    core: RunState,
    eff: Effective,
    key: str,
    status: str,
    *,
    hook_error: str = "",
    waited: float = 0.0,
) -> Stop:
    """The stop for a key that cannot be run now: in flight (retryable) or unknown (not)."""
    name = eff.tool.name
    if status == "in_flight":
        message = (
            f"{name}: a call with idempotency key {key!r} is still in flight after waiting "
            f"{waited:.1f} s (the tool's timeout is {eff.timeout:g} s); it is not run again"
        )
        return core.stamp(
            Stop(
                "tool_error",
                name,
                tool=name,
                retryable=True,
                message=message,
                extra={"why": "in_flight", "idempotency": "in_flight", "key": key},
            )
        )
    tenant = f" --tenant {core.tenant}" if core.tenant is not None else ""
    why = (
        f"its reconcile hook could not tell ({hook_error})"
        if hook_error
        else "the tool has no reconcile hook"
    )
    message = (
        f"{name}: the call with idempotency key {key!r} has an unknown outcome (its process "
        f"stopped before recording one) and {why}; it is not run again: settle it with "
        f"`corral idempotency resolve {key}{tenant} --outcome ...`"
    )
    return core.stamp(
        Stop(
            "tool_error",
            name,
            tool=name,
            retryable=False,
            message=message,
            extra={"why": "outcome_unknown", "idempotency": "unknown", "key": key},
        )
    )
