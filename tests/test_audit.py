"""The audit log end to end: runs recorded and verified, secrets redacted before they are
written, appends that fail closed, checkpoints, export, and the ``corral audit`` commands."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.record import audit
from corral.record.redact import REDACTED, Redactor, redactor
from corral.stores.base import AuditHead, Event
from corral.stores.chain import Sealer
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final

API_KEY = "sk-live-7f3a9c1e5b2d4f6a8c0e"  # looks like an OpenAI key: also caught by pattern
PRIVATE = "correct-horse-battery-staple"  # looks like nothing: only registration catches it


def policy(*allow: str, **sections: Any) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": list(allow)}, "writes": {"require_approval": False}, **sections}
    )


def everything_written(store: Any) -> str:
    """All a store holds about its runs, as one text: audit records, events, run records."""
    parts = [json.dumps(r.to_dict()) for r in audit.records(store)]
    for run in store.list_runs():
        parts.append(repr(run))
        parts += [repr(e) for e in store.events(run.id)]
    return "\n".join(parts)


# -- what the audit log records ------------------------------------------------------------
def test_a_governed_run_is_recorded_as_a_verifiable_chain_of_decisions_and_outcomes() -> None:
    """Each call's decision and outcome are records with tenant, actor, run, tool and digest."""
    store = MemoryStore()

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "answer"

    @corral.tool(name="crm.write", effect="write")
    def crm_write(note: str) -> str:
        return "saved"

    with corral.Run(
        policy("kb.read", "crm.write"),
        tools=[kb_read, crm_write],
        store=store,
        tenant="acme",
        agent="support-bot",
    ) as run:
        run.call("kb.read", {"query": "status"})
        run.call("crm.write", {"note": "called back"})
        run.call("browser.open", {"url": "x"})
    records = list(audit.records(store))
    kinds = [(r.kind, r.tool, r.data.get("outcome") or r.data.get("why")) for r in records]
    assert kinds == [
        ("run_start", None, None),
        ("tool_call", "kb.read", "ok"),
        ("authorized", "crm.write", None),
        ("tool_call", "crm.write", "ok"),
        ("denied", "browser.open", "unknown_tool"),
        ("run_end", None, None),
    ]
    assert {(r.tenant, r.actor, r.run_id) for r in records} == {("acme", "support-bot", run.id)}
    digests = [r.args_digest for r in records if r.tool in ("kb.read", "crm.write")]
    assert all(d is not None and len(d) == 64 for d in digests)
    assert records[-1].data["stop_reason"] == run.result.stop_reason == "tool_denied"
    assert audit.verify(store).ok


def test_verify_reports_the_first_broken_record_in_words() -> None:
    """The result names the record, its run and kind, and what is wrong with it."""
    store = MemoryStore()
    store.append_events([Event(run_id="r1", seq=i, kind="step", at=float(i)) for i in (1, 2, 3)])
    intact = audit.verify(store)
    assert str(intact) == "audit log intact: 3 records"
    assert intact.to_dict() == {
        "ok": True,
        "checked": 3,
        "head": 3,
        "keyed": 0,
        "keyed_from": None,
        "unkeyed": 3,
        "anchor": None,
        "broken": None,
    }
    store._audit[1] = dataclasses.replace(store._audit[1], kind="x")
    result = audit.verify(store)
    assert str(result) == (
        "audit log broken at record 2 (run r1, x): its content does not match its hash: edited "
        "(1 records before it hold)"
    )
    assert result.to_dict()["broken"] == {
        "seq": 2,
        "why": result.broken.why,
        "run_id": "r1",
        "kind": "x",
    }


# -- checkpoints and export -----------------------------------------------------------------
def test_a_checkpoint_round_trips_through_its_file(tmp_path: Path) -> None:
    """write_anchor then load_anchor gives the same anchor; verify accepts it."""
    store = MemoryStore()
    store.append_events([Event(run_id="r", seq=1, kind="step", at=1.0)])
    anchor = audit.checkpoint(store)
    audit.write_anchor(anchor, tmp_path / "head.json")
    assert audit.load_anchor(tmp_path / "head.json") == anchor
    assert audit.verify(store, anchor=anchor).anchor == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read"),
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "other", "seq": 1, "hash": "x"}', "format"),
        ('{"format": "corral-audit-checkpoint/1", "seq": -1, "hash": "x"}', "seq"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """load_anchor says what is wrong with the file instead of trusting it."""
    path = tmp_path / "anchor.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(corral.ConfigError, match=problem):
        audit.load_anchor(path)


def test_a_broken_chain_gets_no_checkpoint() -> None:
    """checkpoint() verifies first: an anchor of a tampered chain would vouch for it."""
    store = MemoryStore()
    store.append_events([Event(run_id="r", seq=i, kind="step", at=1.0) for i in (1, 2)])
    store.audit_head()
    del store._audit[0]
    with pytest.raises(ValueError, match="record 1 is missing"):
        audit.checkpoint(store)


def test_export_writes_one_json_object_per_record(tmp_path: Path) -> None:
    """JSON Lines, oldest first, with the chain fields; ``after`` skips what was exported."""
    store = MemoryStore()
    store.append_events(
        [Event(run_id="r", seq=i, kind="step", at=1.0, tenant="acme") for i in (1, 2, 3)]
    )
    with open(tmp_path / "audit.jsonl", "w") as out:
        assert audit.export(store, out) == 3
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert set(lines[0]) >= {"seq", "run_id", "kind", "tenant", "actor", "prev_hash", "hash"}
    with open(tmp_path / "more.jsonl", "w") as out:
        assert audit.export(store, out, after=2) == 1


# -- redaction ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth failed: Authorization: Bearer abc.DEF-123_xyz", "auth failed: Authorization: "),
        ("key sk-proj-AbCdEf0123456789xyz leaked", f"key {REDACTED} leaked"),
        ("aws AKIAIOSFODNN7EXAMPLE in logs", f"aws {REDACTED} in logs"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig_1-2", f"jwt {REDACTED}"),
        (
            "postgresql://app:hunter2@db.internal/prod",
            f"postgresql://app:{REDACTED}@db.internal/prod",
        ),
        ('{"password": "hunter2", "user": "bob"}', f'{{"password": "{REDACTED}", "user": "bob"}}'),
        ("retry with API_KEY=abc123def", f"retry with API_KEY={REDACTED}"),
        ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", f"stripe {REDACTED}"),
        ("ghp_16C7e42F292c6912E7710c838347Ae178B4a here", f"{REDACTED} here"),
        ("max_tokens=1024 and 500 input tokens", "max_tokens=1024 and 500 input tokens"),
        ("an idempotency key refund:42 was reused", "an idempotency key refund:42 was reused"),
        ("monkey: banana, tokens: 500", "monkey: banana, tokens: 500"),
        ("X-Auth-Token: abcdef123", f"X-Auth-Token: {REDACTED}"),
        ("İstanbul password=abc123", f"İstanbul password={REDACTED}"),
    ],
)
def test_credential_looking_text_is_redacted_and_ordinary_text_is_not(
    text: str, expected: str
) -> None:
    """The built-in patterns catch the usual credential formats and leave the rest alone."""
    got = Redactor().text(text)
    if expected.endswith(": "):  # a kept prefix: the credential after it is gone
        assert got.startswith(expected) and REDACTED in got and "abc.DEF" not in got
    else:
        assert got == expected


def test_values_under_secret_keys_are_redacted_at_any_depth() -> None:
    """Secret-named keys (any case or style) lose their values; counts and flags stay."""
    data = {
        "headers": {"X-Api-Key": "k", "Authorization": "Basic eA==", "accept": "json"},
        "accessToken": "t",
        "client_secret": ["a", "b"],
        "input_tokens": 12,
        "password": None,
        "items": [{"session_id": "s1", "id": 7}],
    }
    assert Redactor().data(data) == {
        "headers": {"X-Api-Key": REDACTED, "Authorization": REDACTED, "accept": "json"},
        "accessToken": REDACTED,
        "client_secret": REDACTED,
        "input_tokens": 12,
        "password": None,
        "items": [{"session_id": REDACTED, "id": 7}],
    }


def test_a_policy_adds_its_own_keys_and_patterns() -> None:
    """``redact.keys`` and ``redact.patterns`` extend the built-in rules in every run."""
    pol = policy("kb.read", redact={"keys": ["ssn"], "patterns": [r"acct-\d{6}"]})
    store = MemoryStore()

    @corral.tool(name="kb.read", effect="read")
    def kb_read(customer: str) -> str:
        raise ValueError(f"lookup failed for {customer}")

    with corral.Run(pol, tools=[kb_read], store=store) as run:
        run.call("kb.read", {"customer": "acct-123456"})
    written = everything_written(store)
    assert "acct-123456" not in written and REDACTED in written
    rules = redactor(pol.redact.keys, pol.redact.patterns)
    assert rules.data({"customer": {"SSN": "078-05-1120"}}) == {"customer": {"SSN": REDACTED}}
    with pytest.raises(corral.PolicyError, match=r"redact\.patterns: '\(' is not a valid"):
        policy(redact={"patterns": ["("]})


@settings(max_examples=60, deadline=None)
@given(
    # Characters of the marker itself left out: "[REDACTED]" must not spell the secret again.
    secret=st.text(st.characters(codec="utf-8", exclude_characters="[]REDACT"), min_size=4),
    pad=st.text(),
)
def test_a_registered_secret_never_survives_redaction(secret: str, pad: str) -> None:
    """Whatever the secret and wherever it sits in a text, the redacted text does not hold it."""
    text = pad + secret + pad[::-1]
    assert secret not in Redactor(secrets=[secret]).text(text)


def test_a_credential_returned_by_a_tool_never_reaches_the_model_or_the_database(
    tmp_path: Path,
) -> None:
    """A tool echoes its own credential (and fails with it once): the observation is scrubbed,
    and neither value appears anywhere in the SQLite file, audit log included."""
    attempts: list[int] = []

    @corral.tool(name="crm.write", effect="write")
    def crm_write(note: str, ctx: corral.ToolContext) -> dict[str, str]:
        creds = ctx.credentials
        attempts.append(1)
        return {"note": note, "debug": f"used {creds['api_key']} and {creds['password']}"}

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str, ctx: corral.ToolContext) -> str:
        raise ConnectionError(f"401 for {ctx.credentials['password']} at {query}")

    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    credentials = {
        "crm.write": {"api_key": API_KEY, "password": PRIVATE},
        "kb.read": {"password": PRIVATE},
    }
    seen: list[Any] = []
    pol = policy("crm.write", "kb.read")
    tools = [crm_write, kb_read]
    with corral.Run(pol, tools=tools, store=store, credentials=credentials) as run:
        seen.append(run.call("crm.write", {"note": "hello"}))
    with corral.Run(pol, tools=tools, store=store, credentials=credentials) as failing:
        failing.call("kb.read", {"query": "status"})
    assert seen == [{"note": "hello", "debug": f"used {REDACTED} and {REDACTED}"}]
    assert failing.result.stop_reason == "tool_error"
    assert failing.result.stop is not None and PRIVATE not in failing.result.stop.message
    assert audit.verify(store).ok
    store.close()
    for name in os.listdir(tmp_path):  # the database, its WAL and anything beside them
        raw = (tmp_path / name).read_bytes()
        assert API_KEY.encode() not in raw and PRIVATE.encode() not in raw, name


def test_credential_looking_values_in_arguments_and_outputs_are_redacted_in_the_audit() -> None:
    """An argument refused by a constraint and an output refused by its schema, both holding
    credential-like text, reach the audit log (and the run record) redacted."""
    store = MemoryStore()

    @corral.tool(name="http.get", effect="read")
    def http_get(url: str) -> str:
        return "x"

    @corral.tool(name="kb.read", effect="read", output_schema={"type": "integer"})
    def kb_read(query: str) -> Any:
        return "token=ghp_16C7e42F292c6912E7710c838347Ae178B4a"

    url = "https://app:hunter22@evil.example/?api_key=AKIAIOSFODNN7EXAMPLE"
    constrained = {"http.get": {"constraints": {"url": {"enum": ["https://docs.example/"]}}}}
    pol = policy(tools={"allow": ["http.get", "kb.read"], "specs": constrained})
    with corral.Run(pol, tools=[http_get], store=store) as denied:
        denied.call("http.get", {"url": url})
    with corral.Run(pol, tools=[kb_read], store=store) as invalid:
        invalid.call("kb.read", {"query": "x"})
    assert denied.result.stop_reason == "tool_denied"
    assert invalid.result.stop_reason == "invalid_tool_output"
    written = everything_written(store)
    for secret in ("hunter22", "AKIAIOSFODNN7EXAMPLE", "ghp_16C7e42F"):
        assert secret not in written
    redacted = {r.kind for r in audit.records(store) if REDACTED in json.dumps(r.data)}
    assert redacted == {"tool_call", "run_end"}


# -- fail closed ----------------------------------------------------------------------------
class AuditDown(MemoryStore):
    """A store that works, except that nothing can be appended to its audit log."""

    def append_events(self, events: Any) -> None:
        raise corral.StoreError("audit log unavailable: disk full")


def test_a_write_whose_authorization_cannot_be_audited_is_refused_and_not_executed() -> None:
    """The write's authorization is audited before it runs: failing that, it never runs,
    the call is refunded and its idempotency key released."""
    executed: list[str] = []

    @corral.tool(name="refund.send", effect="write", cost_usd="2.00")
    def refund(order: str) -> str:
        executed.append(order)
        return "sent"

    store = AuditDown()
    with corral.Run(policy("refund.send"), tools=[refund], store=store) as run:
        run.call("refund.send", {"order": "A-1"}, idempotency_key="refund:A-1")
    assert executed == []
    assert run.result.stop_reason == "control_plane_unavailable"
    assert run.result.stop is not None and run.result.stop.retryable
    assert run.result.usage.tool_calls == 0 and run.result.usage.usd == 0
    assert store.claim("refund:A-1", "d", tenant=None, now=0.0, lease=1.0).status == "claimed"


def test_a_read_whose_outcome_cannot_be_audited_stops_the_run_without_its_observation() -> None:
    """A read ran but its outcome could not be written: the run stops, nothing is returned,
    and the result says the end of the run went unrecorded too."""

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "secret plans"

    returned: list[Any] = []
    with corral.Run(policy("kb.read"), tools=[kb_read], store=AuditDown()) as run:
        returned.append(run.call("kb.read", {"query": "plans"}))
    assert returned == []
    assert run.result.stop_reason == "control_plane_unavailable"
    assert run.result.error is not None and "could not be recorded" in run.result.error


def test_a_run_whose_end_cannot_be_audited_does_not_end_ok() -> None:
    """finish() with the store failing on the last append: not ``ok`` but
    ``control_plane_unavailable``, the answer kept as the partial, the failure on the result."""

    class EndDown(MemoryStore):
        def append_events(self, events: Any) -> None:
            if any(e.kind == "run_end" for e in events):
                raise corral.StoreError("audit log unavailable")
            super().append_events(events)

    with corral.Run(policy(), store=EndDown()) as run:
        run.step()
        result = run.finish("the answer")
    assert (result.status, result.stop_reason) == ("error", "control_plane_unavailable")
    assert result.answer is None and result.partial == "the answer"
    assert result.error is not None and "audit log unavailable" in result.error


def test_the_bounded_loop_fails_closed_when_the_audit_cannot_be_written() -> None:
    """corral.run with a store refusing appends: the model's tool call is not answered."""
    model = ScriptedModel([call("kb.read", query="x"), final("done")])

    @corral.tool(name="kb.read", effect="read")
    def kb_read(query: str) -> str:
        return "x"

    result = corral.run(
        "task", model=model, tools=[kb_read], policy=policy("kb.read"), store=AuditDown()
    )
    assert result.stop_reason == "control_plane_unavailable" and result.answer is None


# -- the command line -----------------------------------------------------------------------
def corral_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m corral ARGS`` in a subprocess."""
    (done,) = corral_clis((args, env))
    return done


def corral_clis(
    *invocations: tuple[tuple[str, ...], dict[str, str] | None],
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``python -m corral ARGS`` at once (each with its extra environment)."""
    environ = {k: v for k, v in os.environ.items() if k != "CORRAL_AUDIT_KEY"}
    started = [
        (
            args,
            subprocess.Popen(
                [sys.executable, "-m", "corral", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**environ, **(env or {})},
            ),
        )
        for args, env in invocations
    ]
    done = []
    for args, proc in started:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(list(args), proc.returncode, out, err))
    return done


def recorded(path: Path, *, key: str | None = None, runs: int = 2) -> None:
    """Record ``runs`` governed runs in a SQLite file (keyed with ``key``)."""
    os.environ.pop("CORRAL_AUDIT_KEY", None)
    if key is not None:
        os.environ["CORRAL_AUDIT_KEY"] = key
    try:
        with SQLiteStore(path) as store:
            for i in range(runs):
                with corral.Run(policy(), store=store, tenant="acme") as run:
                    run.step()
                    run.finish(f"answer {i}")
    finally:
        os.environ.pop("CORRAL_AUDIT_KEY", None)


def test_corral_audit_verify_exit_codes_and_output(tmp_path: Path) -> None:
    """0 and 'intact' for an intact file; 1 naming the first broken record after a raw edit
    (--json with the record); 2 for a usage error."""
    path = tmp_path / "corral.db"
    recorded(path)
    db = f"sqlite:///{path}"
    ok = corral_cli("audit", "verify", "--db", db)
    assert (ok.returncode, ok.stdout.strip()) == (0, "audit log intact: 6 records")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER corral_events_no_update")
    conn.execute("UPDATE corral_events SET tenant = 'globex' WHERE id = 4")
    conn.close()
    broken, as_json, missing = corral_clis(
        (("audit", "verify", "--db", db), None),
        (("audit", "verify", "--db", db, "--json"), None),
        (("audit", "verify", "--db", f"sqlite:///{tmp_path / 'nope.db'}"), None),
    )
    assert broken.returncode == 1
    assert "broken at record 4 (run " in broken.stderr and "edited" in broken.stderr
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False and report["checked"] == 3
    assert report["broken"]["seq"] == 4 and report["broken"]["kind"] == "run_start"
    assert missing.returncode == 1 and "no corral store at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


def test_corral_audit_checkpoint_then_verify_against_it_detects_truncation(
    tmp_path: Path,
) -> None:
    """checkpoint --out writes the head; cutting the tail (and the head) is caught only with
    --anchor; an unreadable anchor is a usage error."""
    path = tmp_path / "corral.db"
    recorded(path)
    db, anchor = f"sqlite:///{path}", tmp_path / "elsewhere" / "head.json"
    anchor.parent.mkdir()
    made = corral_cli("audit", "checkpoint", "--db", db, "--out", str(anchor))
    assert made.returncode == 0 and "checkpoint of record 6" in made.stdout
    assert json.loads(anchor.read_text())["seq"] == 6
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER corral_events_no_delete")
    conn.execute("DELETE FROM corral_events WHERE id > 4")
    conn.execute(
        "UPDATE corral_audit_head SET seq = 4, hash = (SELECT hash FROM corral_events WHERE id = 4)"
    )
    conn.close()
    plain, cut, bad = corral_clis(
        (("audit", "verify", "--db", db), None),
        (("audit", "verify", "--db", db, "--anchor", str(anchor)), None),
        (("audit", "verify", "--db", db, "--anchor", str(tmp_path / "none.json")), None),
    )
    assert plain.returncode == 0  # consistent in itself: only the checkpoint can tell
    assert cut.returncode == 1 and "record 5" in cut.stderr and "truncated" in cut.stderr
    assert bad.returncode == 2 and "--anchor" in bad.stderr


def test_corral_audit_verify_of_a_keyed_chain_needs_the_key(tmp_path: Path) -> None:
    """Without CORRAL_AUDIT_KEY: exit 2 saying so; with it: intact; with another: broken."""
    path = tmp_path / "keyed.db"
    recorded(path, key="s3cret-audit-key")
    db = f"sqlite:///{path}"
    needs, ok, wrong = corral_clis(
        (("audit", "verify", "--db", db), None),
        (("audit", "verify", "--db", db), {"CORRAL_AUDIT_KEY": "s3cret-audit-key"}),
        (("audit", "verify", "--db", db), {"CORRAL_AUDIT_KEY": "guess"}),
    )
    assert needs.returncode == 2 and "CORRAL_AUDIT_KEY" in needs.stderr
    assert ok.returncode == 0 and "(6 keyed)" in ok.stdout
    assert wrong.returncode == 1 and "another key" in wrong.stderr
    assert b"s3cret-audit-key" not in path.read_bytes()


def test_corral_audit_verify_says_where_keying_began_and_refuses_a_downgrade(
    tmp_path: Path,
) -> None:
    """A file written without the key, then with it: verify (human and --json) says keying
    began at record 4 with 3 unkeyed records before. Every record and the head re-sealed as
    plain SHA-256 (tenant changed): exit 1 under the key, intact without it."""
    path = tmp_path / "corral.db"
    recorded(path, runs=1)
    recorded(path, key="s3cret-audit-key", runs=1)
    db, key = f"sqlite:///{path}", {"CORRAL_AUDIT_KEY": "s3cret-audit-key"}
    human, as_json = corral_clis(
        (("audit", "verify", "--db", db), key), (("audit", "verify", "--db", db, "--json"), key)
    )
    assert human.returncode == 0, human.stderr
    assert "6 records (3 keyed from record 4; 3 unkeyed records before)" in human.stdout
    report = json.loads(as_json.stdout)
    assert (report["keyed"], report["keyed_from"], report["unkeyed"]) == (3, 4, 3)
    with SQLiteStore(path) as store:
        records = store.audit_records()
    forged = Sealer().seal(
        AuditHead(),
        [
            Event(run_id=r.run_id, seq=r.event_seq, kind=r.kind, at=r.at, data=r.data,
                  tenant="globex", actor=r.actor)
            for r in records
        ],
    )  # fmt: skip
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER corral_events_no_update")
    for r in forged:
        conn.execute(
            "UPDATE corral_events SET tenant = ?, prev_hash = ?, hash = ?, mode = ? WHERE id = ?",
            (r.tenant, r.prev_hash, r.hash, r.mode, r.seq),
        )
    conn.execute("UPDATE corral_audit_head SET hash = ?", (forged[-1].hash,))
    conn.close()
    keyed, unkeyed = corral_clis(
        (("audit", "verify", "--db", db, "--json"), key), (("audit", "verify", "--db", db), None)
    )
    report = json.loads(keyed.stdout)
    assert keyed.returncode == 1 and report["ok"] is False and report["broken"]["seq"] == 1
    assert "holds no keyed record" in report["broken"]["why"]
    assert unkeyed.returncode == 0 and "intact" in unkeyed.stdout


def test_corral_audit_checkpoint_of_a_keyed_chain_is_verified_with_the_key(tmp_path: Path) -> None:
    """checkpoint of a keyed file (with the key); verify --anchor without the key: exit 2
    naming the checkpoint; with it: intact against the checkpoint."""
    path, anchor = tmp_path / "keyed.db", tmp_path / "head.json"
    recorded(path, key="s3cret-audit-key")
    db, key = f"sqlite:///{path}", {"CORRAL_AUDIT_KEY": "s3cret-audit-key"}
    made = corral_clis((("audit", "checkpoint", "--db", db, "--out", str(anchor)), key))[0]
    assert made.returncode == 0, made.stderr
    assert json.loads(anchor.read_text())["mode"].startswith("hmac-sha256:")
    without, with_key = corral_clis(
        (("audit", "verify", "--db", db, "--anchor", str(anchor)), None),
        (("audit", "verify", "--db", db, "--anchor", str(anchor)), key),
    )
    assert without.returncode == 2 and "checkpoint" in without.stderr
    assert "CORRAL_AUDIT_KEY" in without.stderr
    assert with_key.returncode == 0 and "matches the checkpoint at record 6" in with_key.stdout


def test_corral_audit_export_writes_json_lines(tmp_path: Path) -> None:
    """export --out FILE writes one record per line; the export re-verifies as a chain."""
    path = tmp_path / "corral.db"
    recorded(path)
    out = tmp_path / "audit.jsonl"
    done = corral_cli("audit", "export", "--db", f"sqlite:///{path}", "--out", str(out))
    assert done.returncode == 0 and "6 records written" in done.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[1]["prev_hash"] == lines[0]["hash"]


def test_corral_demo_then_audit_verify_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    """The demo's governed runs land in the file's audit log, which verifies intact."""
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    demo = corral_cli("demo", "--db", db, "--runs", "5")
    assert demo.returncode == 0, demo.stderr
    verified = corral_cli("audit", "verify", "--db", db, "--json")
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"] is True and report["checked"] > 5


def test_sealing_is_deterministic() -> None:
    """The same events after the same head seal to the same hashes (and keyed ones differ)."""
    events = [Event(run_id="r", seq=1, kind="step", at=1.0, data={"a": [1, 2.5]})]
    assert Sealer().seal(AuditHead(), events) == Sealer().seal(AuditHead(), events)
    assert (
        Sealer("k").seal(AuditHead(), events)[0].hash != Sealer().seal(AuditHead(), events)[0].hash
    )


def test_a_chain_verifies_across_a_change_of_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records sealed under an old key and a new one verify with both keys given, not one."""
    path = tmp_path / "rotated.db"
    for key in ("old-key-123", "new-key-456"):
        monkeypatch.setenv("CORRAL_AUDIT_KEY", key)
        with SQLiteStore(path) as store:
            store.append_events([Event(run_id=key, seq=1, kind="step", at=1.0)])
    with SQLiteStore(path) as store:
        assert audit.verify(store, key=["new-key-456", "old-key-123"]).keyed == 2
        only_new = audit.verify(store, key="new-key-456")
        assert only_new.broken is not None and only_new.broken.seq == 1


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.dictionaries(st.text(max_size=8), JSON, max_size=5), min_size=1))
def test_whatever_the_data_the_chain_reads_back_and_verifies(data: list[dict[str, Any]]) -> None:
    """Any JSON-like event data (big integers, floats of any size, NaN, NUL, nesting) is stored,
    read back and re-hashed to the same chain, in memory and in SQLite alike."""
    events = [Event(run_id="r", seq=i, kind="k", at=i / 3, data=d) for i, d in enumerate(data)]
    memory, sqlite = MemoryStore(), SQLiteStore(":memory:")
    try:
        memory.append_events(events)
        sqlite.append_events(events)
        assert sqlite.audit_head() == memory.audit_head()
        assert audit.verify(sqlite).ok and audit.verify(memory).ok
    finally:
        sqlite.close()


@settings(max_examples=80, deadline=None)
@given(
    length=st.integers(1, 6),
    where=st.integers(0, 5),
    field=st.sampled_from(["run_id", "event_seq", "kind", "at", "tenant", "actor", "data"]),
    value=st.one_of(st.text(max_size=5), st.integers(), st.floats(allow_nan=False), st.none()),
)
def test_any_change_to_any_field_of_any_record_is_detected(
    length: int, where: int, field: str, value: Any
) -> None:
    """One field of one record set to another value: verify names that record."""
    store = MemoryStore()
    store.append_events(
        [Event(run_id="r", seq=i, kind="k", at=1.0, data={"i": i}) for i in range(length)]
    )
    store.audit_head()
    index = where % length
    original = store._audit[index]
    changed = value if field != "data" else {"i": value}
    if getattr(original, field) == changed:
        return
    store._audit[index] = dataclasses.replace(original, **{field: changed})
    result = audit.verify(store)
    assert not result.ok and result.broken is not None and result.broken.seq == index + 1
