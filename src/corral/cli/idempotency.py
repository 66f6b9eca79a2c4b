"""``corral idempotency list | resolve``: see the writes' claims, settle the unknown ones.

::

    corral idempotency list [--unknown | --status S] [--tenant T] [--json] [--db URL]
    corral idempotency resolve KEY --outcome succeeded|failed|not_executed
                               [--output JSON] [--reason R] [--tenant T] [--as NAME] [--db URL]

A claim is ``in_flight`` while the process running its write renews its lease,
``unknown`` once the lease lapsed with no outcome (the process died mid-write),
``done`` with an outcome. ``resolve`` settles an unknown claim after checking the
world by hand: ``succeeded`` stores ``--output`` (JSON, default ``null``) as the
outcome a resumed run replays; ``failed`` stores a failure (replayed as
``tool_error``, never run again); ``not_executed`` frees the key (the next call
runs the tool). Each resolution is appended to the audit log (kind
``idempotency_resolved``, actor ``--as``, default ``$USER@host``).

Exit codes: 0 done; 1 the claim is not unknown (one line says what it is), no store
there, or the store cannot be reached; 2 a usage error or an invalid store URL. Human
output names the store on stderr (``store: URL``).

``list --json`` prints one object whose shape is stable::

    {"store": str, "count": int,
     "claims": [{"key", "tool", "tenant", "status", "created", "lease_until", "outcome"}]}

times are ISO 8601 UTC; ``outcome`` is the stored outcome or ``null``.

Imports the stores, the breaker's probe key, the kill switch's default actor and the shared
``_common`` and ``_format``; no other command module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Annotated, Any, cast

import typer

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ActorOption,
    DbOption,
    Fail,
    JsonOption,
    ReasonOption,
    TenantOption,
    group,
    guarded,
    open_db,
    quoted,
    tenant_option,
)
from corral.cli._format import columns, echo, iso_seconds
from corral.controls.breaker import PROBE_KEY
from corral.controls.killswitch import default_actor
from corral.stores import Store
from corral.stores.base import ClaimRecord, ClaimState, Event

STATES = ("in_flight", "unknown", "done")
OUTCOMES = ("succeeded", "failed", "not_executed")
#: The audit event a resolution appends (``run_id`` is this word: no run did it).
RESOLVED = "idempotency_resolved"

idempotency_app = group(
    "idempotency",
    help="Writes' idempotency claims: list them, settle those left unknown by a crash.",
)


@idempotency_app.command("list")
def list_claims(
    unknown: Annotated[
        bool, typer.Option("--unknown", help="Only claims left unknown (same as --status unknown).")
    ] = False,
    status: Annotated[
        str | None, typer.Option("--status", help="Only claims in this state: " + ", ".join(STATES))
    ] = None,
    tenant: TenantOption = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, oldest first.")] = 1000,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """List idempotency claims (key, tool, tenant, status, created, lease, outcome)."""

    def go() -> int:
        if status is not None and status not in STATES:
            raise Fail(
                EXIT_USAGE, f"--status must be one of {', '.join(STATES)}, got {quoted(status)}"
            )
        if unknown and status not in (None, "unknown"):
            raise Fail(EXIT_USAGE, f"--unknown and --status {status} disagree: give one")
        if limit < 1:
            raise Fail(EXIT_USAGE, f"--limit must be at least 1, got {limit}")
        wanted = cast(ClaimState, "unknown" if unknown else status) if unknown or status else None
        store, url = open_db(db, announce=not json_out)
        claims = store.list_claims(now=time.time(), status=wanted, tenant=tenant, limit=limit)
        rows = [_row(c) for c in claims if not c.key.startswith(PROBE_KEY)]  # writes only
        if json_out:
            body = {"store": url, "count": len(rows), "claims": rows}
            echo(json.dumps(body, default=str))
        elif not rows:
            echo("no claims" + (f" {wanted}" if wanted else ""))
        else:
            _print_table(rows)
        return EXIT_OK

    raise typer.Exit(guarded("idempotency list", go))


@idempotency_app.command()
def resolve(
    key: Annotated[str, typer.Argument(help="The claim's key, as `list` shows it.")],
    outcome: Annotated[
        str, typer.Option("--outcome", help="succeeded, failed or not_executed.")
    ] = "",
    output: Annotated[
        str | None,
        typer.Option("--output", help="With succeeded: the output to replay, as JSON."),
    ] = None,
    reason: ReasonOption = "",
    tenant: Annotated[
        str | None, tenant_option("The tenant whose key it is (default: none).")
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Settle an unknown claim: the write succeeded, failed, or was not executed."""

    def go() -> int:
        if outcome not in OUTCOMES:
            choices = ", ".join(OUTCOMES)
            raise Fail(EXIT_USAGE, f"--outcome must be one of {choices}, got {quoted(outcome)}")
        if output is not None and outcome != "succeeded":
            raise Fail(EXIT_USAGE, f"--output goes with --outcome succeeded, not {outcome}")
        if actor is not None and not actor.strip():
            raise Fail(EXIT_USAGE, "--as needs a value")
        if key.startswith(PROBE_KEY):
            raise Fail(EXIT_USAGE, f"{key} is a circuit breaker's probe, not a write")
        stored = _stored(outcome, output, reason)
        store, _ = open_db(db)
        now = time.time()
        found = store.lookup_claim(key, tenant=tenant, now=now)
        if found is None or not store.resolve_claim(key, tenant=tenant, now=now, outcome=stored):
            raise Fail(EXIT_FAILED, _not_unknown(key, tenant, store))
        who = default_actor() if actor is None else actor
        data = {"key": key, "tool": found.tool, "outcome": outcome, "reason": reason}
        if output is not None:
            data["output"] = output
        store.append_events(
            [
                Event(
                    run_id="operator",
                    seq=0,
                    kind=RESOLVED,
                    at=time.time(),
                    data=data,
                    tenant=tenant,
                    actor=who,
                )
            ]
        )
        echo(f"resolved {key}: {outcome} (by {who})")
        return EXIT_OK

    raise typer.Exit(guarded("idempotency resolve", go))


def _stored(outcome: str, output: str | None, reason: str) -> Mapping[str, Any] | None:
    if outcome == "not_executed":
        return None
    if outcome == "failed":
        why = reason or "resolved as failed by an operator"
        return {"error": f"resolved as failed: {why}", "reason": "tool_error"}
    try:
        value = None if output is None else json.loads(output)
    except json.JSONDecodeError as exc:
        raise Fail(EXIT_USAGE, f"--output is not valid JSON ({exc.msg} at {exc.pos})") from None
    return {"output": value}


def _not_unknown(key: str, tenant: str | None, store: Store) -> str:
    whose = f" for tenant {quoted(tenant)}" if tenant is not None else " (no tenant; see --tenant)"
    now = time.time()
    current = store.lookup_claim(key, tenant=tenant, now=now)
    if current is None:
        return f"no claim {quoted(key)}{whose}"
    if current.status == "in_flight":
        left = current.lease_until - now
        return (
            f"claim {quoted(key)}{whose} is in flight (its process renews it; lease ends in "
            f"{left:.1f} s): only an unknown claim can be resolved"
        )
    return f"claim {quoted(key)}{whose} is already done: only an unknown claim can be resolved"


def _summary(outcome: Mapping[str, Any] | None) -> str:
    if outcome is None:
        return "-"
    if "output" in outcome:
        text = json.dumps(outcome["output"], default=str)
        return "ok " + (text if len(text) <= 40 else text[:37] + "...")
    return f"failed: {outcome.get('error', 'no detail')}"[:60]


def _row(c: ClaimRecord) -> dict[str, Any]:
    return {
        "key": c.key,
        "tool": c.tool,
        "tenant": c.tenant,
        "status": c.status,
        "created": iso_seconds(c.created),
        "lease_until": iso_seconds(c.lease_until),
        "outcome": None if c.outcome is None else dict(c.outcome),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns(
        ("KEY", "TOOL", "TENANT", "STATUS", "CREATED", "LEASE UNTIL", "OUTCOME"),
        (
            (
                r["key"],
                r["tool"] or "-",
                r["tenant"] if r["tenant"] is not None else "-",
                r["status"],
                r["created"],
                r["lease_until"] if r["status"] != "done" else "-",
                _summary(r["outcome"]),
            )
            for r in rows
        ),
    )
