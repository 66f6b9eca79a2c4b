"""Scoped credentials: resolved per tenant at call time, never shown to the model or recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import corral
from corral import audit
from corral.redact import REDACTED
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final
from crash import pg as crash_pg

ACME_KEY = "acme-crm-key-5e1f0a"
GLOBEX_KEY = "globex-crm-key-77b2c9"
SHARED_KEY = "shared-crm-key-0d4e61"


def policy(*allow: str) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": list(allow)}, "writes": {"require_approval": False}}
    )


@corral.tool(name="crm.write", effect="write")
def crm_write(note: str, ctx: corral.ToolContext) -> dict[str, Any]:
    """Echoes every credential it was given: the worst a tool can do with them."""
    return {"note": note, "creds": dict(ctx.credentials)}


def env(**secrets: str) -> dict[str, str]:
    return {f"CORRAL_SECRET__{k}": v for k, v in secrets.items()}


ENV = env(
    acme__CRM_WRITE__API_KEY=ACME_KEY,
    globex__CRM_WRITE__API_KEY=GLOBEX_KEY,
    CRM_WRITE__API_KEY=SHARED_KEY,
)


def observed(tenant: str | None, credentials: Any, store: Any = None) -> Any:
    with corral.Run(
        policy("crm.write"),
        tools=[crm_write],
        tenant=tenant,
        store=store or MemoryStore(),
        credentials=credentials,
    ) as run:
        return run.call("crm.write", {"note": "hi"})


# -- providers ------------------------------------------------------------------------------
def test_env_secrets_resolve_only_the_runs_own_tenant() -> None:
    """Each tenant's tool gets its own key; no tenant gets another's; no tenant, the shared one."""
    provider = corral.EnvSecrets(environ=ENV)
    assert provider.resolve("acme", "crm.write") == {"api_key": ACME_KEY}
    assert provider.resolve("globex", "crm.write") == {"api_key": GLOBEX_KEY}
    assert provider.resolve("initech", "crm.write") == {}
    assert provider.resolve(None, "crm.write") == {"api_key": SHARED_KEY}
    assert provider.resolve("acme", "kb.read") == {}


def test_shared_secrets_are_a_fallback_only_when_asked_for() -> None:
    """``shared=True``: a tenant without its own secret gets the shared one; its own wins."""
    provider = corral.EnvSecrets(environ=ENV, shared=True)
    assert provider.resolve("initech", "crm.write") == {"api_key": SHARED_KEY}
    assert provider.resolve("acme", "crm.write") == {"api_key": ACME_KEY}


@pytest.mark.parametrize(
    "tenant", ["acme__CRM_WRITE", "../globex", "a/b", "", "_shared", "..", "-x", "a b"]
)
def test_a_tenant_id_that_could_name_another_tenants_secrets_is_refused_at_start(
    tenant: str, tmp_path: Path
) -> None:
    """Separators, path segments and the shared folder's name cannot be tenant ids for secrets."""
    for provider in (corral.EnvSecrets(environ=ENV), corral.FileSecrets(tmp_path)):
        with pytest.raises(corral.ConfigError, match="tenant"):
            corral.Run(
                policy("crm.write"),
                tools=[crm_write],
                tenant=tenant,
                store=MemoryStore(),
                credentials=provider,
            )


@given(
    a=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True),
    b=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True),
)
def test_no_tenant_id_resolves_another_tenants_secret(a: str, b: str) -> None:
    """Whatever two tenant ids are, a secret stored for one is never resolved for the other."""
    provider = corral.EnvSecrets(environ=env(**{f"{b}__CRM_WRITE__API_KEY": "b-secret-value"}))
    try:
        provider.check(a)
    except corral.ConfigError:
        return  # refused outright: nothing resolved
    found = provider.resolve(a, "crm.write")
    assert ("b-secret-value" in found.values()) == (a == b)


def write_secret(root: Path, folder: str, tool: str, name: str, value: str) -> Path:
    path = root / folder / tool / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return path


def test_file_secrets_read_the_tenants_folder_and_pick_up_rotation(tmp_path: Path) -> None:
    """One file per secret in <root>/<tenant>/<tool>/; a rotated file is read on the next call."""
    key = write_secret(tmp_path, "acme", "crm.write", "api_key", ACME_KEY)
    write_secret(tmp_path, "globex", "crm.write", "api_key", GLOBEX_KEY)
    (tmp_path / "acme" / "crm.write" / ".hidden").write_text("not a secret")
    provider = corral.FileSecrets(tmp_path)
    assert provider.resolve("acme", "crm.write") == {"api_key": ACME_KEY}
    key.write_text("acme-rotated-key-99\n")
    assert provider.resolve("acme", "crm.write") == {"api_key": "acme-rotated-key-99"}
    assert provider.resolve("initech", "crm.write") == {}


def test_a_link_out_of_the_tenants_folder_refuses_the_call(tmp_path: Path) -> None:
    """A secret file that is a link to another tenant's secret stops the run, tool not run."""
    target = write_secret(tmp_path, "globex", "crm.write", "api_key", GLOBEX_KEY)
    (tmp_path / "acme" / "crm.write").mkdir(parents=True)
    os.symlink(target, tmp_path / "acme" / "crm.write" / "api_key")
    runs: list[int] = []

    @corral.tool(name="crm.write", effect="write")
    def counted(note: str, ctx: corral.ToolContext) -> str:
        runs.append(1)
        return "done"

    with corral.Run(
        policy("crm.write"),
        tools=[counted],
        tenant="acme",
        store=MemoryStore(),
        credentials=corral.FileSecrets(tmp_path),
    ) as run:
        run.call("crm.write", {"note": "hi"})
    assert run.result.stop_reason == "control_plane_unavailable"
    assert runs == []
    assert GLOBEX_KEY not in str(run.result.stop)


def test_a_failing_provider_refuses_the_call_fail_closed() -> None:
    """A provider that raises stops the run with ``control_plane_unavailable``; nothing runs."""

    class Broken:
        def check(self, tenant: str | None) -> None:
            pass

        def resolve(self, tenant: str | None, tool: str) -> dict[str, str]:
            raise TimeoutError("vault did not answer")

    with corral.Run(
        policy("crm.write"), tools=[crm_write], store=MemoryStore(), credentials=Broken()
    ) as run:
        run.call("crm.write", {"note": "hi"})
    assert run.result.stop_reason == "control_plane_unavailable"
    assert run.result.stop is not None and run.result.stop.retryable


def test_credentials_of_the_wrong_shape_are_a_clear_error() -> None:
    """Neither a mapping nor a provider: a ConfigError naming what was given."""
    with pytest.raises(corral.ConfigError, match="secret provider"):
        corral.Run(
            policy("crm.write"), tools=[crm_write], store=MemoryStore(), credentials=["api_key"]
        )  # type: ignore[arg-type]


# -- never seen, never recorded ---------------------------------------------------------------
def test_a_resolved_secret_reaches_the_tool_but_not_the_model_trace_or_audit(
    tmp_path: Path,
) -> None:
    """A tool echoes its provider-resolved key: the model, the run, the events and every byte of
    the SQLite file (audit log included) hold only the redaction marker."""
    path = tmp_path / "corral.db"
    store = SQLiteStore(path)
    model = ScriptedModel([call("crm.write", note="hi"), final("done")])
    given_to_tool: list[str] = []

    @corral.tool(name="crm.write", effect="write")
    def echo(note: str, ctx: corral.ToolContext) -> str:
        given_to_tool.append(ctx.credentials["api_key"])
        return f"wrote {note} with key {ctx.credentials['api_key']}"

    result = corral.run(
        "write a note",
        model=model,
        tools=[echo],
        policy=policy("crm.write"),
        tenant="acme",
        store=store,
        credentials=corral.EnvSecrets(environ=ENV),
    )
    assert result.status == "ok" and given_to_tool == [ACME_KEY]
    shown = repr([r for r in model.requests])
    assert ACME_KEY not in shown and f"with key {REDACTED}" in shown
    assert audit.verify(store).ok
    store.close()
    for name in os.listdir(tmp_path):
        assert ACME_KEY.encode() not in (tmp_path / name).read_bytes(), name


def test_each_tenants_run_gets_its_own_key_from_one_provider() -> None:
    """Two tenants' runs through one provider: each tool call sees its own tenant's key only."""
    provider = corral.EnvSecrets(environ=ENV)
    got: list[tuple[str | None, dict[str, str]]] = []

    @corral.tool(name="crm.write", effect="write")
    def peek(note: str, ctx: corral.ToolContext) -> str:
        got.append((ctx.tenant, dict(ctx.credentials)))
        return "ok"

    for tenant in ("acme", "globex", "initech"):
        with corral.Run(
            policy("crm.write"),
            tools=[peek],
            tenant=tenant,
            store=MemoryStore(),
            credentials=provider,
        ) as run:
            run.call("crm.write", {"note": "x"})
    assert got == [
        ("acme", {"api_key": ACME_KEY}),
        ("globex", {"api_key": GLOBEX_KEY}),
        ("initech", {}),
    ]
    assert observed("acme", provider)["creds"] == {"api_key": REDACTED}  # echoed: scrubbed


def test_a_write_refused_by_its_secret_provider_leaves_its_key_free(tmp_path: Path) -> None:
    """The provider fails before anything is claimed: once it works, the same write runs."""
    runs: list[int] = []
    fail = True

    class Flaky:
        def check(self, tenant: str | None) -> None:
            pass

        def resolve(self, tenant: str | None, tool: str) -> dict[str, str]:
            if fail:
                raise OSError("vault sealed")
            return {"api_key": ACME_KEY}

    @corral.tool(name="crm.write", effect="write")
    def counted(note: str, ctx: corral.ToolContext) -> str:
        runs.append(1)
        return "done"

    store = SQLiteStore(tmp_path / "corral.db")
    pol = policy("crm.write")
    with corral.Run(pol, tools=[counted], store=store, credentials=Flaky()) as first:
        first.call("crm.write", {"note": "hi"}, idempotency_key="note-1")
    assert first.result.stop_reason == "control_plane_unavailable" and runs == []
    fail = False
    with corral.Run(pol, tools=[counted], store=store, credentials=Flaky()) as second:
        assert second.call("crm.write", {"note": "hi"}, idempotency_key="note-1") == "done"
    assert runs == [1] and first.result.usage.tool_calls == 0
    store.close()


def test_on_postgres_a_resolved_secret_is_in_no_record_the_store_holds() -> None:
    """Against the shared PostgreSQL store: the tool echoes its tenant's key; the model sees
    the redaction marker, and the run record, its events and the audit log never the key."""
    pg = crash_pg()
    with pg.fresh_store(pg.require_postgres()) as store:
        model = ScriptedModel([call("crm.write", note="hi"), final("done")])
        result = corral.run(
            "write a note", model=model, tools=[crm_write], policy=policy("crm.write"),
            tenant="acme", store=store, credentials=corral.EnvSecrets(environ=ENV),
        )  # fmt: skip
        assert result.status == "ok"
        parts = [json.dumps(r.to_dict()) for r in audit.records(store)]
        parts += [repr(store.get_run(result.run_id)), repr(store.events(result.run_id))]
        written = "\n".join(parts)
        assert ACME_KEY not in written
        shown = repr(model.requests)
        assert ACME_KEY not in shown and REDACTED in shown
        assert audit.verify(store).ok
