"""API keys on every backend: created, authenticated, revoked and audited the same way; the
table holds a digest, never the secret; anything but a live key is refused with one error."""

from __future__ import annotations

import sqlite3
import string
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg import PG_URL as POSTGRES_URL
from test_sqlite import SPAWN, run_children

from corral.controls.keys import Action, authenticate, create_key, permits, revoke_key
from corral.exceptions import InvalidKey
from corral.record.audit import verify
from corral.stores import Store
from corral.stores.base import KeyRecord, KeyStore
from corral.stores.memory import MemoryStore
from corral.stores.sqlite import SQLiteStore

# The `store` fixture (tests/stores/conftest.py) runs each test against every backend.


def raw_rows(store: Store) -> list[tuple[Any, ...]]:
    """Every row of ``corral_api_keys`` as the database holds it (empty for the in-memory
    store, which has no table: its records are read instead)."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, timeout=10)
        try:
            return [tuple(r) for r in conn.execute("SELECT * FROM corral_api_keys")]
        finally:
            conn.close()
    schema = getattr(store, "schema", None)
    if schema is None:
        return [tuple(vars_of(k)) for k in store.list_keys()]
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True, options=f"-c search_path={schema}") as c:
        return [tuple(r) for r in c.execute("SELECT * FROM corral_api_keys").fetchall()]


def vars_of(record: KeyRecord) -> list[Any]:
    """Every field of a record, in order."""
    return [getattr(record, f) for f in record.__slots__]  # type: ignore[attr-defined]


def test_every_backend_is_a_key_store(store: Store) -> None:
    """Each backend answers the KeyStore Protocol."""
    assert isinstance(store, KeyStore)


def test_a_created_key_authenticates_as_its_tenant_and_role(store: Store) -> None:
    """The token authenticates to the principal it was made for; the listing shows it."""
    new = create_key(store, tenant="acme", role="approver", name="on-call", actor="ops")
    who = authenticate(store, new.token)
    assert (who.key_id, who.tenant, who.role, who.name) == (
        new.key.id,
        "acme",
        "approver",
        "on-call",
    )
    assert store.get_key(new.key.id) == new.key
    assert [k.id for k in store.list_keys()] == [new.key.id]
    assert new.key.created_by == "ops" and new.key.revoked is None


def test_a_global_admin_key_has_no_tenant_and_acts_for_every_tenant(store: Store) -> None:
    """``tenant=None`` makes a global admin key."""
    who = authenticate(store, create_key(store, tenant=None, role="admin").token)
    assert who.tenant is None and who.role == "admin"
    assert permits(who, Action.KILL_TOGGLE, None) and permits(who, Action.RUNS_READ, "any")


def test_a_revoked_key_is_refused_and_stays_listed(store: Store) -> None:
    """Revoking refuses the key from then on; revoking it again changes nothing."""
    new = create_key(store, tenant="acme", role="agent")
    other = create_key(store, tenant="acme", role="agent")
    assert revoke_key(store, new.key.id, actor="ops") is True
    with pytest.raises(InvalidKey):
        authenticate(store, new.token)
    assert authenticate(store, other.token).key_id == other.key.id
    assert revoke_key(store, new.key.id) is False
    revoked = store.get_key(new.key.id)
    assert revoked is not None and revoked.revoked is not None
    assert [k.id for k in store.list_keys()] == [new.key.id, other.key.id]


def test_unknown_and_altered_tokens_are_refused_alike(store: Store) -> None:
    """An unknown id, and every one-character change of a live token, raise InvalidKey with
    the same message, which never holds the token."""
    token = create_key(store, tenant="acme", role="agent").token
    messages = set()
    for i in range(len(token)):
        for char in {"0", "a", "Z", "_"} - {token[i]}:
            altered = token[:i] + char + token[i + 1 :]
            with pytest.raises(InvalidKey) as caught:
                authenticate(store, altered)
            messages.add(str(caught.value))
            assert token[4:] not in str(caught.value) and altered[4:] not in str(caught.value)
    unknown = "crl_" + "0" * 16 + "_" + token[-43:]
    with pytest.raises(InvalidKey) as caught:
        authenticate(store, unknown)
    messages.add(str(caught.value))
    assert messages == {"invalid API key"}


def test_an_expired_key_is_refused(store: Store) -> None:
    """A key past its expiry authenticates no more; before it, it does."""
    new = create_key(store, tenant="acme", role="agent", expires_in=60, now=1_000.0)
    assert new.key.expires == 1_060.0
    assert authenticate(store, new.token, now=1_059.0).tenant == "acme"
    with pytest.raises(InvalidKey):
        authenticate(store, new.token, now=1_060.0)


def test_the_table_never_holds_the_secret(store: Store) -> None:
    """What the store keeps of a key holds neither its token nor its secret, only a digest."""
    new = create_key(store, tenant="acme", role="admin", name="root")
    secret = new.token[len("crl_") + 16 + 1 :]
    assert new.token == f"crl_{new.key.id}_{secret}" and len(secret) == 43
    rows = raw_rows(store)
    assert len(rows) == 1
    text = repr(rows)
    assert secret not in text and new.token not in text and secret[:16] not in text
    assert new.key.digest in text


def test_listing_by_tenant_leaves_out_other_tenants_and_global_keys(store: Store) -> None:
    """``list_keys(tenant=)`` lists that tenant's keys only, oldest first."""
    a1 = create_key(store, tenant="a", role="agent", now=1.0).key
    create_key(store, tenant="b", role="agent", now=2.0)
    create_key(store, tenant=None, role="admin", now=3.0)
    a2 = create_key(store, tenant="a", role="admin", now=4.0).key
    assert [k.id for k in store.list_keys(tenant="a")] == [a1.id, a2.id]
    assert len(store.list_keys()) == 4


def test_adding_an_id_already_taken_changes_nothing(store: Store) -> None:
    """``add_key`` never replaces a key: a second record with the same id is refused."""
    first = create_key(store, tenant="acme", role="agent").key
    clash = KeyRecord(id=first.id, tenant="evil", role="admin", digest="0" * 64, created=1.0)
    assert store.add_key(clash) is False
    assert store.get_key(first.id) == first


def test_creating_and_revoking_are_audited_without_the_secret(store: Store) -> None:
    """One ``api_key`` audit record per change, with who, the key's id, role and tenant,
    never its token, secret or digest; the chain verifies."""
    new = create_key(store, tenant="acme", role="agent", name="bot", actor="alice")
    revoke_key(store, new.key.id, actor="bob")
    revoke_key(store, new.key.id, actor="carol")  # already revoked: nothing recorded
    from corral.record.audit import records

    found = [r for r in records(store) if r.kind == "api_key"]
    assert [(r.data["action"], r.actor, r.tenant) for r in found] == [
        ("create", "alice", "acme"),
        ("revoke", "bob", "acme"),
    ]
    assert all(r.data["key_id"] == new.key.id and r.data["role"] == "agent" for r in found)
    text = repr([r.data for r in found])
    assert new.token[21:] not in text and new.key.digest not in text
    assert verify(store).ok


@pytest.fixture(params=["memory", "sqlite"])
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store of this process (Hypothesis draws from the global ``random`` state, which a
    PostgreSQL pool's threads also touch: the backends' lookup is the same either way, and
    PostgreSQL's is covered by the tests above)."""
    store: Store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "k.db")
    create_key(store, tenant="acme", role="admin")
    yield store
    store.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    token=st.one_of(
        st.text(),
        st.text(alphabet=string.printable, max_size=80).map(lambda t: "crl_" + t),
        st.from_regex(r"\Acrl_[0-9a-f]{16}_[A-Za-z0-9_-]{43}\Z"),
        st.binary(max_size=70),
        st.none(),
        st.integers(),
    )
)
def test_arbitrary_input_as_a_token_raises_only_invalid_key(local: Store, token: Any) -> None:
    """Whatever is offered as a token (text, bytes, None, a well-formed unknown key), the one
    error is InvalidKey, with a message that does not repeat it."""
    with pytest.raises(InvalidKey) as caught:
        authenticate(local, token)
    assert str(caught.value) == "invalid API key"


def create_keys(path: str, start: Any, send: Any) -> None:
    """In a child: create 40 keys on the file as soon as every child is ready; send the ids."""
    with SQLiteStore(path) as store:
        start.wait()
        send.send([create_key(store, tenant="acme", role="agent").key.id for _ in range(40)])


def test_processes_creating_keys_at_once_get_distinct_ids(tmp_path: Path) -> None:
    """3 processes create keys on one SQLite file at once: every id is distinct, every key
    stored, every creation audited, the chain intact."""
    path = tmp_path / "keys.db"
    SQLiteStore(path).close()
    start = SPAWN.Barrier(3)
    ids = [i for batch in run_children(create_keys, [(str(path), start)] * 3) for i in batch]
    assert len(ids) == len(set(ids)) == 120
    with SQLiteStore(path) as store:
        assert {k.id for k in store.list_keys()} == set(ids)
        checked = verify(store)
        assert checked.ok and checked.checked == 120


def test_a_key_created_by_one_process_is_revoked_for_another(tmp_path: Path) -> None:
    """Two store objects on one file (as two processes would hold): a revocation through one
    refuses the key through the other at once (keys are read from the store every time)."""
    path = tmp_path / "keys.db"
    with SQLiteStore(path) as one, SQLiteStore(path) as two:
        new = create_key(one, tenant="acme", role="agent")
        assert authenticate(two, new.token).key_id == new.key.id
        revoke_key(one, new.key.id)
        started = time.monotonic()
        with pytest.raises(InvalidKey):
            authenticate(two, new.token)
        assert time.monotonic() - started < 1
