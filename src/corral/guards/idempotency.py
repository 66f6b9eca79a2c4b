"""Idempotency: a write happens at most once per key.

The key is the caller's, else derived from the fields the tool declares
(``idempotency_key_from``, scoped to the tenant, across runs), else from run,
tool and argument digest (protecting retries and resumes within one run). The
claim is made in the store *before* the side effect starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..breaker import wall
from ..exceptions import Stop, ToolRejected
from ..runtime import args_digest
from .cache import copy_of
from .denial import count_mistake

if TYPE_CHECKING:
    from ..runtime import Effective, RunCore

LEASE_SECONDS = 300.0


def key_for(
    core: RunCore, eff: Effective, args: Mapping[str, Any], digest: str, given: str | None
) -> str:
    if given:
        return f"caller:{eff.tool.name}:{given}"
    fields = eff.tool.idempotency_key_from
    if fields:
        picked = {f: args.get(f) for f in fields}
        return f"fields:{eff.tool.name}:{args_digest(picked)}"
    return f"run:{core.id}:{eff.tool.name}:{digest}"


def claim(core: RunCore, eff: Effective, key: str, digest: str) -> Mapping[str, Any] | None:
    """Claim ``key``; return a stored outcome to replay, or ``None`` to go ahead."""
    result = core._store_call(
        core.store.claim,
        key,
        digest,
        tenant=core.tenant,
        # Wall time: leases are compared by other processes and machines (a run's own
        # monotonic clock means nothing there).
        now=wall(core),
        lease=LEASE_SECONDS,
    )
    name = eff.tool.name
    if result.status == "claimed":
        return None
    if result.status == "done":
        return result.outcome
    if result.status == "mismatch":
        message = f"{name}: idempotency key {key!r} was already used with different arguments"
        core.event("denied", tool=name, why="idempotency_mismatch", count=core.invalid_calls + 1)
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
    state = "still in flight" if result.status == "in_flight" else "in an unknown state"
    raise core.stamp(
        Stop(
            "tool_error",
            name,
            tool=name,
            retryable=result.status == "in_flight",
            message=f"{name}: a call with idempotency key {key!r} is {state}; it is not run again",
            extra={"idempotency": result.status},
        )
    )


def replay(core: RunCore, eff: Effective, key: str, stored: Mapping[str, Any]) -> Any:
    """The stored outcome of an earlier call with ``key``: its output, or its failure again."""
    if "output" in stored:
        return copy_of(stored["output"])
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
            extra={"idempotency": "replayed"},
        )
    )
