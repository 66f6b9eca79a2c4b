"""Scoped credentials: resolved per tenant at call time, never shown to the model or recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.record import audit
from corral.record.redact import REDACTED
from corral.secrets import parse_variable
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
    ACME__CRM_DOT_WRITE__API_KEY=ACME_KEY,
    GLOBEX__CRM_DOT_WRITE__API_KEY=GLOBEX_KEY,
    CRM_DOT_WRITE__API_KEY=SHARED_KEY,
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


@pytest.mark.parametrize("tenant", ["../globex", "a/b", "", "_shared", "..", "-x", "a b", ".x"])
def test_a_tenant_id_that_could_name_another_tenants_secrets_is_refused_at_start(
    tenant: str, tmp_path: Path
) -> None:
    """Path segments, separators and the shared folder's name cannot be tenant ids for secrets."""
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
    named = corral.EnvSecrets().variable(b, "crm.write", "api_key")
    provider = corral.EnvSecrets(environ={named: "b-secret-value"})
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


# -- the naming of secrets cannot collide ----------------------------------------------------
# Pieces that made names collide before (separators, their escapes' words, case), so that the
# generated names share them often.
PIECES = ["a", "b1", "x", "_", "__", ".", "-", "dot", "under", "up", "dash", "crm", "shared"]
TENANT_PIECES = [*PIECES, "A", "B", "DOT", "UP", "UNDER", "X_"]


def _joined(pieces: list[str], pattern: str) -> st.SearchStrategy[str]:
    import re

    return (
        st.lists(st.sampled_from(pieces), min_size=1, max_size=5)
        .map("".join)
        .filter(lambda s: re.fullmatch(pattern, s) is not None and s != "_shared")
    )


TENANTS = st.none() | _joined(TENANT_PIECES, r"[A-Za-z0-9][A-Za-z0-9._-]*")
TOOLS = _joined(PIECES, r"[a-z0-9_.-]+")
NAMES = _joined(["a", "b1", "_", "key", "api", "dot", "x"], r"[a-z0-9](?:[a-z0-9]|_(?!_))*")
TRIPLES = st.tuples(TENANTS, TOOLS, NAMES)


@settings(max_examples=400, deadline=None)
@given(one=TRIPLES, other=TRIPLES)
def test_no_two_tenant_tool_and_name_triples_share_an_environment_variable(
    one: tuple[str | None, str, str], other: tuple[str | None, str, str]
) -> None:
    """The variable of a (tenant or none, tool, secret name) triple is its own: two different
    triples never map to the same name, and a name reads back as its triple."""
    provider = corral.EnvSecrets()
    a, b = provider.variable(*one), provider.variable(*other)
    assert (a == b) == (one == other), (one, other, a)
    assert parse_variable(a.removeprefix("CORRAL_SECRET__")) == one


def test_the_names_that_collided_before_are_apart() -> None:
    """The issue's cases: tenant-less ``bank1__crm.read`` against tenant ``bank1``'s (and
    ``BANK1``'s) ``crm.read``; ``a.b``, ``a_b`` and ``a-b`` of one tenant."""
    v = corral.EnvSecrets().variable
    names = {
        v(None, "bank1__crm.read", "api_key"),
        v("bank1", "crm.read", "api_key"),
        v("BANK1", "crm.read", "api_key"),
        v("globex", "bank1__crm.read", "api_key"),
    }
    assert len(names) == 4
    assert len({v("acme", tool, "k1") for tool in ("a.b", "a_b", "a-b", "a__b", "a..b")}) == 5
    assert v("acme", "crm.read", "api_key") == "CORRAL_SECRET__ACME__CRM_DOT_READ__API_KEY"
    assert v(None, "send_email", "token") == "CORRAL_SECRET__SEND_UNDER_EMAIL__TOKEN"
    assert v("Acme-1", "x", "k") == "CORRAL_SECRET___UP_ACME_DASH_1__X__K"


@settings(max_examples=150, deadline=None)
@given(stored=TRIPLES, asking=TRIPLES, shared=st.booleans())
def test_a_run_receives_only_its_own_tenants_secret_from_the_environment(
    stored: tuple[str | None, str, str],
    asking: tuple[str | None, str, str],
    shared: bool,
) -> None:
    """A secret stored for one triple reaches a run's tool only when the tool is the same and
    the run is of the same tenant (or, with ``shared=True``, the secret is tenant-less)."""
    tenant, tool, name = stored
    environ = {corral.EnvSecrets().variable(*stored): "stored-secret-value"}
    seen: list[dict[str, str]] = []

    def peek(ctx: corral.ToolContext) -> str:
        seen.append(dict(ctx.credentials))
        return "ok"

    asker = corral.tool(peek, name=asking[1], effect="read")
    with corral.Run(
        policy(asking[1]),
        tools=[asker],
        tenant=asking[0],
        store=MemoryStore(),
        credentials=corral.EnvSecrets(environ=environ, shared=shared),
    ) as run:
        run.call(asking[1], {})
    expected = tool == asking[1] and (
        tenant == asking[0] or (tenant is None and (asking[0] is None or shared))
    )
    assert seen == [{name: "stored-secret-value"} if expected else {}]


@settings(max_examples=80, deadline=None)
@given(stored=TRIPLES, asking=TRIPLES, shared=st.booleans())
def test_file_secrets_resolve_only_the_runs_own_tenants_files(
    stored: tuple[str | None, str, str],
    asking: tuple[str | None, str, str],
    shared: bool,
) -> None:
    """The same for files: a secret filed for one triple is resolved for another only when it
    is the same tenant and tool (or a shared one, when asked for); a tool name that is a path
    part ('.', '..', hidden) is refused."""
    import tempfile

    tenant, tool, name = stored
    with tempfile.TemporaryDirectory() as root:
        provider = corral.FileSecrets(root, shared=shared)
        if tool.startswith("."):
            with pytest.raises(corral.ConfigError, match="cannot name a folder"):
                provider.resolve(tenant, tool)
            return
        write_secret(Path(root), tenant or "_shared", tool, name, "filed-secret-value")
        if asking[1].startswith("."):
            with pytest.raises(corral.ConfigError):
                provider.resolve(asking[0], asking[1])
            return
        found = provider.resolve(asking[0], asking[1])
    expected = tool == asking[1] and (
        tenant == asking[0] or (tenant is None and (asking[0] is None or shared))
    )
    assert found == ({name: "filed-secret-value"} if expected else {})


def test_a_tenant_folder_linked_to_another_tenants_is_refused(tmp_path: Path) -> None:
    """``<root>/globex`` a link to ``<root>/acme``: globex's run is refused, not given acme's."""
    write_secret(tmp_path, "acme", "crm.write", "api_key", ACME_KEY)
    os.symlink(tmp_path / "acme", tmp_path / "globex")
    with pytest.raises(corral.ConfigError, match="another folder"):
        corral.FileSecrets(tmp_path).resolve("globex", "crm.write")
    assert corral.FileSecrets(tmp_path).resolve("acme", "crm.write") == {"api_key": ACME_KEY}


def test_a_variable_named_the_old_way_is_not_read_and_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``CORRAL_SECRET__acme__CRM_WRITE__API_KEY`` (before the escaping): not read; the run's
    start warns naming it and how variables are named now."""
    old = "CORRAL_SECRET__acme__CRM_WRITE__API_KEY"
    provider = corral.EnvSecrets(environ={old: ACME_KEY})
    with caplog.at_level("WARNING", logger="corral"):
        assert observed("acme", provider)["creds"] == {}
    warned = [r.getMessage() for r in caplog.records if old in r.getMessage()]
    assert warned and "_DOT_" in warned[0] and ACME_KEY not in warned[0]


# -- a credential the tenant lacks refuses the call ----------------------------------------
def _needs_key(runs: list[str]) -> corral.Tool:
    @corral.tool(name="crm.write", effect="write", credentials=("api_key",))
    def crm(note: str, ctx: corral.ToolContext) -> str:
        runs.append(ctx.credentials.get("api_key", ""))
        return "written"

    return crm


@pytest.mark.parametrize(
    "credentials",
    [
        corral.EnvSecrets(environ=ENV),
        {"crm.write": {"api_key": ""}},
        {"crm.write": {"other": "other-value-123"}},
        {},
    ],
    ids=["other-tenants-only", "empty", "another-name", "none"],
)
def test_a_tool_missing_a_declared_credential_is_refused_before_approval_or_claim(
    credentials: Any,
) -> None:
    """Tenant initech has no api_key for crm.write: tool_denied (detail the tool, why
    missing_credential) naming the credential and tenant, before anyone is asked to approve,
    nothing charged, the tool never run, the write's key left free."""
    runs: list[str] = []
    asked: list[Any] = []
    pol = corral.Policy.from_dict({"tools": {"allow": ["crm.write"]}})
    store = MemoryStore()
    with corral.Run(
        pol,
        tools=[_needs_key(runs)],
        tenant="initech",
        store=store,
        credentials=credentials,
        approver=lambda req: asked.append(req) or True,
    ) as run:
        run.call("crm.write", {"note": "hi"}, idempotency_key="note-1")
    stop = run.result.stop
    assert stop is not None and run.result.stop_reason == "tool_denied"
    assert (stop.detail, stop.tool, stop.extra["why"]) == ("crm.write", "crm.write",
                                                           "missing_credential")  # fmt: skip
    assert "'api_key'" in stop.message and "'initech'" in stop.message
    assert "other-value-123" not in str(stop.to_dict()) and not stop.retryable
    assert (runs, asked, run.result.usage.tool_calls) == ([], [], 0)
    assert store.lookup_claim("caller:crm.write:note-1", tenant="initech", now=0.0) is None
    kinds = [(e.kind, e.data.get("why")) for e in store.events(run.id)]
    assert ("denied", "missing_credential") in kinds


def test_a_credential_declared_in_the_policy_is_required_too() -> None:
    """``tools.specs.<name>.credentials`` adds to the code's: a tenant without it is refused,
    one with it runs; the message names the variable it was looked for in."""
    runs: list[int] = []

    @corral.tool(name="crm.write", effect="write")
    def crm(note: str, ctx: corral.ToolContext) -> str:
        runs.append(1)
        return "written"

    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["crm.write"], "specs": {"crm.write": {"credentials": ["api_key"]}}},
            "writes": {"require_approval": False},
        }
    )
    provider = corral.EnvSecrets(environ=ENV)
    for tenant, ran in (("initech", False), ("acme", True)):
        with corral.Run(
            pol, tools=[crm], tenant=tenant, store=MemoryStore(), credentials=provider
        ) as run:
            run.call("crm.write", {"note": "hi"})
        assert (run.result.stop_reason == "ok") == ran
    assert runs == [1]
    # initech's refusal names where its key was looked for.
    with corral.Run(pol, tools=[crm], tenant="initech", store=MemoryStore(),
                    credentials=provider) as run:  # fmt: skip
        run.call("crm.write", {"note": "hi"})
    assert run.result.stop is not None
    assert "CORRAL_SECRET__INITECH__CRM_DOT_WRITE__API_KEY" in run.result.stop.message


def test_the_bounded_loop_stops_on_a_missing_credential_with_the_stop_shape() -> None:
    """Through corral.run: the result's stop renders as ``tool_denied:crm.write
    (missing_credential: api_key)``; a tenant-less run does not get acme's key."""
    runs: list[str] = []
    model = ScriptedModel([call("crm.write", note="hi"), final("done")])
    result = corral.run(
        "write", model=model, tools=[_needs_key(runs)], policy=policy("crm.write"),
        store=MemoryStore(), credentials=corral.EnvSecrets(environ=env(
            ACME__CRM_DOT_WRITE__API_KEY=ACME_KEY)),
    )  # fmt: skip
    assert result.stop_reason == "tool_denied" and runs == []
    assert result.stop is not None
    assert str(result.stop) == "tool_denied:crm.write (missing_credential: api_key)"
    assert result.stop.extra == {
        "why": "missing_credential",
        "missing": ["api_key"],
        "note": "api_key",
    }
    assert "a run without a tenant" in result.stop.message


def test_declaring_credentials_needs_a_context_and_plain_names() -> None:
    """A tool declaring credentials without a ToolContext parameter, or with a name that is
    not lower-case letters, digits and single '_': a ToolDefinitionError; in a policy, an
    error at its path."""
    with pytest.raises(corral.ToolDefinitionError, match="ToolContext"):
        corral.tool(lambda note: note, name="x.y", credentials=("api_key",))

    def takes_ctx(ctx: corral.ToolContext) -> int:
        return 1

    for bad in ("API_KEY", "api__key", "", "_key", "api-key"):
        with pytest.raises(corral.ToolDefinitionError, match="credential names"):
            corral.tool(takes_ctx, name="x.y", credentials=(bad,))
    with pytest.raises(corral.PolicyError, match=r"tools\.specs\.x\.credentials"):
        corral.Policy.from_dict({"tools": {"specs": {"x": {"credentials": ["Bad Name"]}}}})
    one = corral.tool(takes_ctx, name="x.y", credentials="api_key")  # one name, not letters
    assert one.credentials == ("api_key",)
