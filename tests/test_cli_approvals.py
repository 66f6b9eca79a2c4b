"""``corral approvals list | show | approve | deny``: the ``--json`` shapes, who and why
recorded and audited, tenant isolation, self-approval refused, one-line errors and exit codes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli.app import app
from corral.record import audit
from corral.stores.base import ApprovalRecord, Store
from corral.stores.sqlite import SQLiteStore
from crash import pg as crash_pg

ROW = [
    "id", "status", "run_id", "tool", "tenant", "agent", "args_digest", "arguments",
    "created", "expires", "approver", "reason", "decided_at", "used_at",
    "step", "call_id", "purpose", "cost_usd", "effect", "idempotency_key",
]  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    """The command in this process."""
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, str]]:
    """A store holding three pending approvals (acme's two, other's one), and its URL."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        store: Store = SQLiteStore(str(path))
        try:
            fill(store)
            yield store, f"sqlite:///{path}"
        finally:
            store.close()
        return
    pg = crash_pg()
    url = pg.require_postgres()
    with pg.fresh_store(url) as pg_store:
        fill(pg_store)
        yield pg_store, f"{url}?schema={pg_store.schema}"


def fill(store: Store) -> None:
    now = time.time()
    for id, tenant, amount in (
        ("apr_a1", "acme", 5),
        ("apr_a2", "acme", 7),
        ("apr_o1", "other", 1),
    ):
        store.create_approval(
            ApprovalRecord(
                id=id,
                run_id=f"run_{id}",
                tool="refund.send",
                args_digest=f"digest-{id}",
                arguments={"amount": amount, "api_key": "[redacted]"},
                tenant=tenant,
                agent="support-bot",
                created=now,
                expires=now + 900,
            )
        )


def test_list_json_has_a_stable_shape_and_filters_by_tenant(db: tuple[Store, str]) -> None:
    """``list --json`` gives every field of each pending approval; --tenant keeps to one tenant."""
    _, url = db
    result = invoke("approvals", "list", "--json", "--db", url)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert list(out) == ["store", "count", "approvals"] and out["count"] == 3
    first = out["approvals"][0]
    assert list(first) == ROW
    assert first["id"] == "apr_a1" and first["status"] == "pending"
    assert first["arguments"] == {"amount": 5, "api_key": "[redacted]"}
    assert first["created"].endswith("Z") and first["decided_at"] is None
    assert first["approver"] is None and first["used_at"] is None
    mine = json.loads(
        invoke("approvals", "list", "--json", "--tenant", "other", "--db", url).stdout
    )
    assert [a["id"] for a in mine["approvals"]] == ["apr_o1"]


def test_approve_records_who_and_why_and_audits_it(db: tuple[Store, str]) -> None:
    """The approval carries the approver and reason; the audit log has both, as the actor."""
    store, url = db
    result = invoke(
        "approvals", "approve", "apr_a1", "--as", "alice", "--reason", "order checked", "--db", url
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "approved apr_a1: refund.send for run run_apr_a1 (by alice: order checked)"
    )
    shown = json.loads(invoke("approvals", "show", "apr_a1", "--json", "--db", url).stdout)
    assert list(shown) == ["store", "approval"] and list(shown["approval"]) == ROW
    assert (shown["approval"]["status"], shown["approval"]["approver"]) == ("approved", "alice")
    assert shown["approval"]["reason"] == "order checked" and shown["approval"]["decided_at"]
    (record,) = [r for r in audit.records(store) if r.kind == "approval_decision"]
    assert (record.actor, record.tenant, record.run_id) == ("alice", "acme", "run_apr_a1")
    assert record.data["reason"] == "order checked" and record.data["status"] == "approved"
    assert (record.tool, record.args_digest) == ("refund.send", "digest-apr_a1")
    listed = json.loads(invoke("approvals", "list", "--json", "--db", url).stdout)
    assert [a["id"] for a in listed["approvals"]] == ["apr_a2", "apr_o1"]
    approved = invoke("approvals", "list", "--status", "approved", "--json", "--db", url)
    assert [a["id"] for a in json.loads(approved.stdout)["approvals"]] == ["apr_a1"]


def test_deny_defaults_the_approver_to_the_os_user(db: tuple[Store, str]) -> None:
    """Without --as the decision is recorded as $USER@host."""
    store, url = db
    result = invoke("approvals", "deny", "apr_a2", "--db", url, env={"USER": "dora"})
    assert result.exit_code == 0, result.output
    denied = store.get_approval("apr_a2")
    assert denied is not None and denied.status == "denied"
    assert denied.approver.startswith("dora@")


def test_an_approval_of_another_tenant_cannot_be_decided(db: tuple[Store, str]) -> None:
    """With --tenant, another tenant's approval is as good as unknown: refused, left pending."""
    store, url = db
    result = invoke("approvals", "approve", "apr_o1", "--tenant", "acme", "--as", "al", "--db", url)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "corral approvals approve: no approval 'apr_o1' in tenant acme (corral approvals list)"
    )
    still = store.get_approval("apr_o1")
    assert still is not None and still.status == "pending"
    ok = invoke("approvals", "approve", "apr_o1", "--tenant", "other", "--as", "al", "--db", url)
    assert ok.exit_code == 0, ok.output


def test_the_runs_own_agent_cannot_approve(db: tuple[Store, str]) -> None:
    """``--as`` naming the run's agent is refused: an agent never approves its own action."""
    store, url = db
    result = invoke("approvals", "approve", "apr_a1", "--as", "support-bot", "--db", url)
    assert result.exit_code == 1
    assert "an agent cannot approve its own action" in result.stderr
    assert store.get_approval("apr_a1").status == "pending"  # type: ignore[union-attr]


def test_deciding_twice_unknown_or_expired_is_one_line_and_exit_1(db: tuple[Store, str]) -> None:
    """A decided, unknown or expired approval: one clear line on stderr, exit 1."""
    store, url = db
    assert invoke("approvals", "deny", "apr_a1", "--as", "bob", "--db", url).exit_code == 0
    again = invoke("approvals", "approve", "apr_a1", "--as", "carol", "--db", url)
    assert again.exit_code == 1
    assert again.stderr.splitlines() == [
        f"store: {url}",
        "corral approvals approve: cannot approve approval apr_a1: it is denied by bob",
    ]
    unknown = invoke("approvals", "approve", "apr_nope", "--db", url)
    assert (unknown.exit_code, len(unknown.stderr.strip().splitlines())) == (1, 2)
    assert "no approval 'apr_nope'" in unknown.stderr
    past = time.time() - 5
    store.create_approval(
        ApprovalRecord(
            id="apr_old", run_id="r", tool="t", args_digest="d", arguments={}, expires=past
        )
    )
    late = invoke("approvals", "approve", "apr_old", "--as", "carol", "--db", url)
    assert late.exit_code == 1 and "expired" in late.stderr
    assert store.get_approval("apr_old").status == "expired"  # type: ignore[union-attr]
    missing = invoke("approvals", "show", "apr_nope", "--db", url)
    assert missing.exit_code == 1 and "no approval 'apr_nope'" in missing.stderr


def test_usage_errors_exit_2_with_one_line(db: tuple[Store, str]) -> None:
    """An unknown --status or an empty --as: one line, exit 2, no traceback."""
    _, url = db
    bad = invoke("approvals", "list", "--status", "maybe", "--db", url)
    assert bad.exit_code == 2
    assert bad.stderr.startswith("corral approvals list: --status must be one of")
    empty = invoke("approvals", "approve", "apr_a1", "--as", " ", "--db", url)
    assert empty.exit_code == 2 and "--as needs a name" in empty.stderr
    assert "Traceback" not in bad.output + empty.output


def test_list_and_show_in_text(db: tuple[Store, str]) -> None:
    """The text forms name the approval, its tool, tenant and arguments."""
    _, url = db
    listed = invoke("approvals", "list", "--db", url)
    assert listed.exit_code == 0
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "TOOL"] and len(lines) == 4
    shown = invoke("approvals", "show", "apr_a1", "--db", url)
    assert "tenant:      acme" in shown.stdout and '"amount": 5' in shown.stdout
    empty = invoke("approvals", "list", "--status", "used", "--db", url)
    assert empty.stdout.strip() == "no used approvals"


def test_kill_enable_cancels_the_pending_approvals_its_scope_covers(db: tuple[Store, str]) -> None:
    """A tenant switch cancels that tenant's pending approvals only, recording who and why."""
    store, url = db
    result = invoke(
        "kill", "enable", "--tenant", "acme", "--mode", "disable_writes",
        "--reason", "storm", "--by", "oncall", "--db", url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cancelled 2 pending approval(s) it covers" in result.stdout
    statuses = {a.id: (a.status, a.approver) for a in store.list_approvals(status=None)}
    assert statuses == {
        "apr_a1": ("cancelled", "oncall"),
        "apr_a2": ("cancelled", "oncall"),
        "apr_o1": ("pending", ""),
    }
    cancelled = invoke("approvals", "list", "--status", "cancelled", "--json", "--db", url)
    assert "storm" in json.loads(cancelled.stdout)["approvals"][0]["reason"]
