"""``corral idempotency list | resolve`` on SQLite and PostgreSQL: listing claims by state and
tenant, settling unknown ones (audited), and one clear line for what cannot be done."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.record.audit import records
from corral.stores import Store
from corral.stores.sqlite import SQLiteStore
from crash import POLICY, effects, pay, pay_and_die, pay_tool, quick_leases
from crash import pg as crash_pg

LEASE = 0.4
runner = CliRunner()


#: Leases of 0.4 s renewed every 0.1 s, so a dead process's claim lapses quickly: every
#: run of this module is given them.
QUICK = quick_leases(LEASE)


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, str]]:
    """A fresh durable store and its URL."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        store = SQLiteStore(path)
        try:
            yield store, f"sqlite:///{path}"
        finally:
            store.close()
        return
    url = crash_pg().require_postgres()
    with crash_pg().fresh_store(url) as pg:
        yield pg, f"{url}?schema={pg.schema}"


def cli(*args: str) -> tuple[int, str]:
    """Exit code and output, without the line naming the store (test_cli_store.py pins it)."""
    result = runner.invoke(app, ["idempotency", *args])
    lines = result.output.splitlines(keepends=True)
    return result.exit_code, "".join(x for x in lines if not x.startswith("store: "))


def unknown_key(store: Store, tmp_path: Path, order: str, point: str = "after_claim") -> str:
    """The key of a payment whose process was killed at ``point``, once its lease lapsed."""
    path = tmp_path / "effects.log"
    assert pay_and_die(store, path, order, point, services=QUICK) < 0
    time.sleep(LEASE + 0.15)
    result = pay(store, path, order, services=QUICK)
    assert result.stop.why == "outcome_unknown"
    key: str = result.stop.extra["key"]
    return key


def test_list_shows_claims_by_state_and_tenant(db, tmp_path):
    """``list`` shows every claim with its state; ``--unknown``/``--status``/``--tenant`` filter."""
    store, url = db
    path = tmp_path / "effects.log"
    key = unknown_key(store, tmp_path, "A-1")
    assert pay(store, path, "B-2", services=QUICK).status == "ok"
    code, out = cli("list", "--db", url)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["KEY", "TOOL", "TENANT", "STATUS"]
    assert len(rows) == 2 and any(key in r and "unknown" in r for r in rows)
    assert any("done" in r and 'ok "paid B-2"' in r for r in rows)
    code, out = cli("list", "--unknown", "--json", "--db", url)
    assert code == 0
    [claim] = json.loads(out)["claims"]
    assert claim["key"] == key and claim["status"] == "unknown" and claim["tool"] == "pay.send"
    assert claim["tenant"] is None and claim["outcome"] is None
    assert set(claim) == {"key", "tool", "tenant", "status", "created", "lease_until", "outcome"}
    assert json.loads(cli("list", "--status", "done", "--json", "--db", url)[1])["claims"][0][
        "outcome"
    ] == {"output": "paid B-2"}
    assert cli("list", "--tenant", "acme", "--db", url)[1].strip() == "no claims"
    assert cli("list", "--status", "in_flight", "--db", url)[1].strip() == "no claims in_flight"


def test_resolve_succeeded_is_replayed_and_audited(db, tmp_path):
    """``resolve --outcome succeeded --output``: the next run replays it; the audit log says who."""
    store, url = db
    key = unknown_key(store, tmp_path, "A-1", "after_tool")
    code, out = cli(
        "resolve", key, "--outcome", "succeeded", "--output", '"paid A-1 (by hand)"',
        "--reason", "seen in the ledger", "--as", "alice", "--db", url,
    )  # fmt: skip
    assert code == 0 and out.strip() == f"resolved {key}: succeeded (by alice)"
    with corral.Run(
        POLICY, tools=[pay_tool(tmp_path / "effects.log")], store=store, services=QUICK
    ) as run:
        assert run.call("pay.send", {"order": "A-1"}) == "paid A-1 (by hand)"
    assert effects(tmp_path / "effects.log") == ["A-1"]
    [event] = [r for r in records(store) if r.kind == "idempotency_resolved"]
    assert event.actor == "alice" and event.data["key"] == key
    assert event.data["outcome"] == "succeeded" and event.data["reason"] == "seen in the ledger"


def test_resolve_failed_replays_the_failure(db, tmp_path):
    """``--outcome failed``: the next run gets ``tool_error`` back and does not run the tool."""
    store, url = db
    key = unknown_key(store, tmp_path, "A-1")
    assert cli("resolve", key, "--outcome", "failed", "--reason", "refused", "--db", url)[0] == 0
    result = pay(store, tmp_path / "effects.log", "A-1", services=QUICK)
    assert result.stop_reason == "tool_error" and "refused" in result.stop.message
    assert effects(tmp_path / "effects.log") == []


def test_resolve_not_executed_frees_the_key(db, tmp_path):
    """``--outcome not_executed``: the key is free, the next run pays, once."""
    store, url = db
    key = unknown_key(store, tmp_path, "A-1")
    assert cli("resolve", key, "--outcome", "not_executed", "--db", url)[0] == 0
    path = tmp_path / "effects.log"
    assert pay(store, path, "A-1", services=QUICK).status == "ok"
    assert pay(store, path, "A-1", services=QUICK).status == "ok"
    assert effects(path) == ["A-1"]


def test_resolving_a_claim_that_is_not_unknown_fails_with_one_line(db, tmp_path):
    """A done, missing or wrong-tenant key: exit 1 and one line saying what it is."""
    store, url = db
    key = unknown_key(store, tmp_path, "A-1")
    assert cli("resolve", key, "--outcome", "not_executed", "--db", url)[0] == 0
    assert pay(store, tmp_path / "effects.log", "A-1", services=QUICK).status == "ok"
    code, out = cli("resolve", key, "--outcome", "failed", "--db", url)
    assert code == 1 and len(out.strip().splitlines()) == 1
    assert "is already done: only an unknown claim can be resolved" in out
    code, out = cli("resolve", key, "--outcome", "failed", "--tenant", "acme", "--db", url)
    assert code == 1 and f"no claim {key!r} for tenant 'acme'" in out


def test_resolving_a_claim_in_flight_is_refused(db, tmp_path):
    """A claim whose process is alive cannot be resolved."""
    store, url = db
    store.claim("k", "d", tenant="acme", now=time.time(), lease=60.0, tool="pay.send")
    code, out = cli("resolve", "k", "--outcome", "failed", "--tenant", "acme", "--db", url)
    assert code == 1 and "is in flight" in out and len(out.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["resolve", "k", "--outcome", "maybe"], "--outcome must be one of"),
        (["resolve", "k"], "--outcome must be one of"),
        (["resolve", "k", "--outcome", "failed", "--output", "1"], "--output goes with"),
        (["resolve", "k", "--outcome", "succeeded", "--output", "{nope"], "not valid JSON"),
        (["resolve", "k", "--outcome", "failed", "--as", " "], "--as needs a value"),
        (["list", "--status", "lost"], "--status must be one of"),
        (["list", "--unknown", "--status", "done"], "disagree"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, says):
    """Bad options: exit 2, one line naming the option and the value."""
    code, out = cli(*args, "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert code == 2 and says in out and len(out.strip().splitlines()) == 1


def test_the_command_runs_as_a_program(tmp_path):
    """``python -m corral idempotency list --json`` works in a fresh process."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SQLiteStore(tmp_path / "c.db").close()
    done = subprocess.run(
        [sys.executable, "-m", "corral", "idempotency", "list", "--json", "--db", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"store": url, "count": 0, "claims": []}


def test_the_breakers_probe_claims_are_not_listed_or_resolvable(db):
    """A half-open probe is claimed in the store too; ``list`` shows writes only, and
    ``resolve`` refuses a probe's key."""
    store, url = db
    probe = "breaker-probe:browser.open:1234.5"
    store.claim(probe, "probe", tenant=None, now=time.time() - 3600, lease=1.0)
    assert [c.status for c in store.list_claims(now=time.time())] == ["unknown"]
    code, out = cli("list", "--db", url, "--json")
    assert code == 0 and json.loads(out)["claims"] == []
    code, out = cli("resolve", probe, "--outcome", "failed", "--db", url)
    assert code == 2 and "probe, not a write" in out
