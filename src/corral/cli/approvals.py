"""``corral approvals list | show | approve | deny``: decide the writes agents wait for.

::

    corral approvals list [--status S|all] [--tenant T] [--db URL] [--json]
    corral approvals show ID [--db URL] [--json]
    corral approvals approve ID [--reason R] [--as NAME] [--tenant T] [--db URL]
    corral approvals deny ID [--reason R] [--as NAME] [--tenant T] [--db URL]

A run waiting for approval (see :mod:`corral.controls.approvals`) sees the decision at
its next look at the store (within a second). The approver is ``--as``, default
``$USER@host``; it is recorded with ``--reason`` on the approval and in the audit
log. ``--tenant`` scopes a command to one tenant: an approval of another tenant
is not listed and cannot be decided. The run's own agent cannot approve.

Exit codes: 0 done; 1 the approval is unknown, already decided, expired or may not
be decided by this approver, no store there, or the store fails; 2 a usage error or an
invalid store URL (one line, never a traceback). Human output names the store on
stderr (``store: URL``).

``list --json`` prints ``{"store": str, "count": int, "approvals": [row, ...]}`` and
``show --json`` prints ``{"store": str, "approval": row}``; a row is::

    {"id", "status", "run_id", "tool", "tenant", "agent", "args_digest", "arguments",
     "created", "expires", "approver", "reason", "decided_at", "used_at",
     "step", "call_id", "purpose", "cost_usd", "effect", "idempotency_key"}

``status`` is ``pending``, ``approved``, ``denied``, ``expired``, ``cancelled`` or
``used`` (approved, and the run went ahead on it); times are ISO 8601 in UTC
(``decided_at`` and ``used_at`` are ``null`` until then); ``arguments`` are redacted.
``step`` is the run's step when it asked, ``call_id`` the model's tool call, ``purpose``
the model's text of that turn (its stated reason, redacted; ``null`` when it gave none),
``cost_usd`` (text) and ``effect`` the tool's declared cost and effect, and
``idempotency_key`` the key the write runs under once approved (``null`` for requests
filed by an older version).

Imports the approvals queue (:mod:`corral.controls.approvals`), the rows of
:mod:`corral.record.views` (the HTTP API answers with the same), the stores' records and
the shared ``_common`` and ``_format``; no other command module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, cast, get_args

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
    group,
    guarded,
    open_db,
    quoted,
    tenant_option,
)
from corral.cli._format import columns, echo
from corral.controls import approvals
from corral.exceptions import ApprovalError
from corral.record.views import approval_row
from corral.stores.base import ApprovalRecord, ApprovalStatus

STATUSES: tuple[str, ...] = (*get_args(ApprovalStatus), "all")

approvals_app = group(
    "approvals", help="List, show, approve and deny the writes agents are waiting for."
)

Tenant = Annotated[str | None, tenant_option("Only this tenant's approvals (refuse others).")]
ApprovalId = Annotated[str, typer.Argument(help="The approval's id (corral approvals list).")]


def _guarded(command: str, fn: Callable[[], int]) -> int:
    def body() -> int:
        try:
            return fn()
        except ApprovalError as exc:  # unknown, decided, expired, not this approver's
            raise Fail(EXIT_FAILED, str(exc)) from None

    return guarded(f"approvals {command}", body)


@approvals_app.command("list")
def list_(
    status: Annotated[
        str, typer.Option("--status", help=f"One of {', '.join(STATUSES)}.")
    ] = "pending",
    tenant: Tenant = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """List approvals (pending ones unless --status says otherwise), oldest first."""

    def go() -> int:
        if status not in STATUSES:
            raise Fail(
                EXIT_USAGE,
                f"--status must be one of {', '.join(STATUSES)}, got {quoted(status)}",
            )
        wanted = None if status == "all" else cast(ApprovalStatus, status)
        store, url = open_db(db, announce=not json_out)
        found = store.list_approvals(status=wanted, tenant=tenant)
        rows = [approval_row(a) for a in found]
        if json_out:
            echo(json.dumps({"store": url, "count": len(rows), "approvals": rows}, indent=2))
            return EXIT_OK
        if not rows:
            echo(f"no {'' if status == 'all' else status + ' '}approvals")
            return EXIT_OK
        _table(found)
        return EXIT_OK

    raise typer.Exit(_guarded("list", go))


@approvals_app.command()
def show(approval_id: ApprovalId, db: DbOption = None, json_out: JsonOption = False) -> None:
    """Show one approval: its action, arguments, status and who decided it."""

    def go() -> int:
        store, url = open_db(db, announce=not json_out)
        record = store.get_approval(approval_id)
        if record is None:
            raise Fail(EXIT_FAILED, f"no approval {quoted(approval_id)} in {url}")
        data = approval_row(record)
        if json_out:
            echo(json.dumps({"store": url, "approval": data}, indent=2))
            return EXIT_OK
        for key in ("id", "status", "tool", "run_id", "tenant", "agent", "args_digest"):
            echo(f"{key + ':':<12} {data[key] if data[key] is not None else '-'}")
        echo(f"{'created:':<12} {data['created']}")
        echo(f"{'expires:':<12} {data['expires']}{_expiry(record)}")
        if record.status != "pending":
            echo(f"{'decided by:':<12} {record.approver or '-'}")
            echo(f"{'reason:':<12} {record.reason or '-'}")
            echo(f"{'decided at:':<12} {data['decided_at'] or '-'}")
        if record.used_at is not None:
            echo(f"{'used at:':<12} {data['used_at']}")
        for key in ("step", "effect", "cost_usd", "call_id", "idempotency_key"):
            if data[key] is not None:
                echo(f"{key.replace('_', ' ') + ':':<12} {_flat(str(data[key]), 200)}")
        if data["purpose"]:
            echo("purpose (the model's text of that turn):")
            echo("  " + _flat(str(data["purpose"]), 1000))
        echo("arguments:")
        shown = _bounded(data["arguments"])
        echo(json.dumps(shown, indent=2, sort_keys=True, ensure_ascii=False))
        return EXIT_OK

    raise typer.Exit(_guarded("show", go))


@approvals_app.command()
def approve(
    approval_id: ApprovalId,
    reason: ReasonOption = "",
    as_: ActorOption = None,
    tenant: Tenant = None,
    db: DbOption = None,
) -> None:
    """Approve a pending write: the waiting run executes it, once."""
    raise typer.Exit(
        _guarded("approve", lambda: _decide(approval_id, True, reason, as_, tenant, db))
    )


@approvals_app.command()
def deny(
    approval_id: ApprovalId,
    reason: ReasonOption = "",
    as_: ActorOption = None,
    tenant: Tenant = None,
    db: DbOption = None,
) -> None:
    """Deny a pending write: the waiting run stops with approval_denied."""
    raise typer.Exit(_guarded("deny", lambda: _decide(approval_id, False, reason, as_, tenant, db)))


def _decide(
    approval_id: str,
    approve_it: bool,
    reason: str,
    who: str | None,
    tenant: str | None,
    db: str | None,
) -> int:
    if who is not None and not who.strip():
        raise Fail(EXIT_USAGE, "--as needs a name")
    if tenant is not None and not tenant.strip():
        raise Fail(EXIT_USAGE, "--tenant needs a value")
    store, _ = open_db(db)
    decide = approvals.approve if approve_it else approvals.deny
    record = decide(store, approval_id, approver=who, reason=reason, tenant=tenant)
    verb = "approved" if approve_it else "denied"
    echo(
        f"{verb} {record.id}: {record.tool} for run {record.run_id} "
        f"(by {record.approver}" + (f": {record.reason})" if record.reason else ")")
    )
    return EXIT_OK


#: ``show`` cuts each string argument to this many characters (``--json`` prints them whole).
SHOW_CHARS = 2000


def _bounded(value: Any) -> Any:
    """``value`` with every string longer than :data:`SHOW_CHARS` cut, saying how long it was."""
    if isinstance(value, str) and len(value) > SHOW_CHARS:
        return f"{value[:SHOW_CHARS]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bounded(v) for v in value]
    return value


def _flat(text: str, limit: int) -> str:
    """``text`` on one line (whitespace and control characters as single spaces), cut."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text[: limit * 2]).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _expiry(record: ApprovalRecord) -> str:
    if record.status != "pending":
        return ""
    left = record.expires - time.time()
    return f" (in {left:.0f} s)" if left > 0 else " (passed: it expires at the run's next look)"


def _table(records: list[ApprovalRecord]) -> None:
    now = time.time()
    columns(
        ("ID", "STATUS", "TOOL", "TENANT", "AGENT", "RUN", "EXPIRES IN", "BY"),
        (
            (
                r.id,
                r.status,
                r.tool,
                r.tenant or "-",
                r.agent or "-",
                r.run_id,
                f"{max(0.0, r.expires - now):.0f} s" if r.status == "pending" else "-",
                r.approver or "-",
            )
            for r in records
        ),
    )
