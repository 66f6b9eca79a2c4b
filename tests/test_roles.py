"""Who may do what: every role against every action, for its own tenant, another tenant and
every tenant at once; anything unknown is refused; creating a key checks what it is given.

The expected table below is written out action by action: an action added to
:class:`~corral.controls.keys.Action` without a row here fails these tests, and one added
without a rule in ``RULES`` is refused to every role (fail closed)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.controls import keys
from corral.controls.keys import ROLES, Action, Principal, check, create_key, permits
from corral.exceptions import ConfigError, Forbidden, InvalidKey, StoreError
from corral.stores.memory import MemoryStore

A, P, D = "agent", "approver", "admin"

#: For each action, the roles that may do it in their own tenant. Nobody but an admin (its
#: own tenant, or a global admin for any) may do anything for another tenant.
EXPECTED: dict[str, set[str]] = {
    # running agents: never an approver
    "run.start": {A, D},
    "tool.authorize": {A, D},
    "tool.report": {A, D},
    "model.reserve": {A, D},
    "model.settle": {A, D},
    "run.end": {A, D},
    "tools.list": {A, D},
    # reading
    "runs.read": {A, P, D},
    "runs.timeline": {A, P, D},
    "approvals.read": {A, P, D},
    "kill.status": {A, P, D},
    "audit.verify": {A, P, D},
    "audit.export": {A, P, D},
    "metrics.read": {A, P, D},
    # deciding and operating: never an agent
    "approvals.decide": {P, D},
    "kill.toggle": {D},
    "keys.manage": {D},
}


def principal(role: str, tenant: str | None = "acme") -> Principal:
    """A principal of ``role`` in ``tenant`` (``None``: global)."""
    return Principal(key_id="0" * 16, tenant=tenant, role=role, name="t")  # type: ignore[arg-type]


def test_the_table_names_every_action_and_no_other() -> None:
    """Every action has a row above: a new action cannot go untested."""
    assert set(EXPECTED) == {a.value for a in Action}


def test_every_action_is_of_exactly_one_kind() -> None:
    """Running, reading, deciding, killing, managing: each action in exactly one."""
    kinds = [keys.RUNNING, keys.READING, keys.DECIDING, keys.KILLING, keys.MANAGING]
    for action in Action:
        assert sum(action in kind for kind in kinds) == 1, action


@pytest.mark.parametrize("action", list(Action), ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_the_matrix_for_own_other_and_every_tenant(role: str, action: Action) -> None:
    """Own tenant: as the table says. Another tenant, every tenant (None), an empty one:
    never, for a tenant's key of any role."""
    own = principal(role)
    assert permits(own, action, "acme") is (role in EXPECTED[action.value])
    assert permits(own, action, "acme2") is False
    assert permits(own, action, "ACME") is False
    assert permits(own, action, "") is False
    assert permits(own, action, None) is False


@pytest.mark.parametrize("action", list(Action), ids=str)
def test_a_global_admin_may_do_everything_for_every_tenant(action: Action) -> None:
    """A global admin: every action, for any tenant and for every tenant at once."""
    root = principal("admin", None)
    assert permits(root, action, "acme") and permits(root, action, "other")
    assert permits(root, action, None)


@pytest.mark.parametrize("action", list(Action), ids=str)
@pytest.mark.parametrize("role", ["agent", "approver"])
def test_only_an_admin_can_be_global(role: str, action: Action) -> None:
    """An agent or approver principal without a tenant (no key can be made so) is refused."""
    assert not any(permits(principal(role, None), action, t) for t in ("acme", None))


@pytest.mark.parametrize("role", ["root", "Admin", "", "agent ", "superuser"])
def test_an_unknown_role_may_do_nothing(role: str) -> None:
    """A role corral does not know is refused every action, even a global one."""
    for action in Action:
        for tenant in ("acme", None):
            assert not permits(principal(role), action, tenant)
            assert not permits(principal(role, None), action, tenant)


def test_an_unknown_action_or_principal_is_refused() -> None:
    """A plain string, even one spelling an action, and a look-alike principal: refused."""
    root = principal("admin", None)
    assert not permits(root, "run.start", "acme")  # type: ignore[arg-type]
    assert not permits(root, "anything", None)  # type: ignore[arg-type]
    fake: Any = type("Fake", (), {"role": "admin", "tenant": None, "key_id": "x"})()
    assert not permits(fake, Action.RUNS_READ, "acme")


@given(role=st.text(max_size=12), tenant=st.one_of(st.none(), st.text(max_size=8)))
def test_no_role_outside_the_table_is_ever_permitted(role: str, tenant: str | None) -> None:
    """Hypothesis: any other role string, any tenant asked: refused."""
    if role in ROLES:
        return
    for action in Action:
        assert not permits(principal(role, tenant), action, tenant)


def test_check_raises_forbidden_naming_role_action_and_tenant() -> None:
    """``check`` passes what ``permits`` allows and names what it refuses."""
    agent = principal("agent")
    check(agent, Action.TOOL_AUTHORIZE, "acme")
    with pytest.raises(
        Forbidden, match=r"this key \(agent of tenant 'acme'\) may not approvals.decide for"
    ):
        check(agent, Action.APPROVALS_DECIDE, "acme")
    with pytest.raises(Forbidden, match="for tenant 'other'"):
        check(agent, Action.RUNS_READ, "other")
    with pytest.raises(Forbidden, match="for every tenant"):
        check(principal("admin"), Action.KILL_TOGGLE, None)


def test_the_issue_promises_hold() -> None:
    """An agent key never approves, toggles the kill switch or reads another tenant; an
    approver key never runs agents; an approver may see but not toggle the kill switch."""
    agent, approver = principal("agent"), principal("approver")
    assert not permits(agent, Action.APPROVALS_DECIDE, "acme")
    assert not permits(agent, Action.KILL_TOGGLE, "acme")
    assert not any(permits(agent, a, "other") for a in keys.READING)
    assert not any(permits(approver, a, "acme") for a in keys.RUNNING)
    assert permits(approver, Action.KILL_STATUS, "acme")
    assert not permits(approver, Action.KILL_TOGGLE, "acme")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tenant": "acme", "role": "owner"}, "role must be one of agent, approver, admin"),
        ({"tenant": None, "role": "agent"}, "only an admin key can be global"),
        ({"tenant": None, "role": "approver"}, "only an admin key can be global"),
        ({"tenant": "", "role": "agent"}, "a key's tenant is a tenant's id"),
        ({"tenant": " acme", "role": "agent"}, "a key's tenant is a tenant's id"),
        ({"tenant": "a\nb", "role": "agent"}, "printable text"),
        ({"tenant": "x" * 201, "role": "agent"}, "at most 200"),
        ({"tenant": "acme", "role": "agent", "name": "a\x00"}, "name is printable"),
        ({"tenant": "acme", "role": "agent", "expires_in": 0}, "lifetime must be positive"),
        ({"tenant": "acme", "role": "agent", "expires_in": -5}, "lifetime must be positive"),
    ],
)
def test_creating_a_key_refuses_what_cannot_be_a_key(options: dict[str, Any], message: str) -> None:
    """Bad role, global non-admin, no tenant, bad name or lifetime: ConfigError, nothing
    stored or audited."""
    store = MemoryStore()
    with pytest.raises(ConfigError, match=message):
        create_key(store, **options)
    assert store.list_keys() == [] and store.audit_records() == []


def test_a_token_has_the_prefix_the_id_and_256_bits_of_secret() -> None:
    """``crl_<16 hex>_<43 url-safe>``; two keys never share an id or a secret."""
    store = MemoryStore()
    a, b = (create_key(store, tenant="acme", role="agent") for _ in range(2))
    for new in (a, b):
        prefix, key_id, secret = new.token[:4], new.token[4:20], new.token[21:]
        assert prefix == "crl_" and key_id == new.key.id and new.token[20] == "_"
        assert len(secret) == 43 and keys.SECRET_BYTES * 8 == 256
        assert new.key.digest == keys.digest(secret) and len(new.key.digest) == 64
    assert a.key.id != b.key.id and a.token[21:] != b.token[21:]
    assert a.token not in repr(a) and a.token[21:] not in repr(a.key)


def test_an_id_taken_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should the random id collide with a stored key's, another is drawn: no key replaced."""
    store = MemoryStore()
    first = create_key(store, tenant="acme", role="agent")
    ids = iter([first.key.id, "1" * 16])
    monkeypatch.setattr(keys.secrets, "token_hex", lambda n: next(ids))
    second = create_key(store, tenant="other", role="admin")
    assert second.key.id == "1" * 16
    assert store.get_key(first.key.id) == first.key


def test_a_store_refusing_every_fresh_id_creates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that reports every id taken: StoreError after a few draws, never a loop."""
    store = MemoryStore()
    monkeypatch.setattr(store, "add_key", lambda record, audit=None: False)
    with pytest.raises(StoreError, match="refused 3 fresh key ids"):
        create_key(store, tenant="acme", role="agent")


def test_a_stored_record_that_breaks_the_rules_does_not_authenticate() -> None:
    """A row edited to an unknown role, to a global agent, or to a digest that is not hex
    is refused with InvalidKey (fail closed)."""
    store = MemoryStore()
    new = create_key(store, tenant="acme", role="agent")
    edits = (
        replace(new.key, role="root"),  # type: ignore[arg-type]
        replace(new.key, tenant=None),
        replace(new.key, digest="é" * 64),
    )
    for bad in edits:
        store._keys[new.key.id] = bad
        with pytest.raises(InvalidKey):
            keys.authenticate(store, new.token)


def test_revoking_an_unknown_id_raises_key_error() -> None:
    """``revoke_key`` of an id no key has (or that cannot be an id): KeyError."""
    store = MemoryStore()
    for key_id in ("0" * 16, "nope", "crl_" + "0" * 16):
        with pytest.raises(KeyError):
            keys.revoke_key(store, key_id)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2_592_000), ("12h", 43_200), ("15m", 900), (" 1d ", 86_400)]
)
def test_periods_read_as_seconds(text: str, seconds: int) -> None:
    """``--expires-in`` periods: minutes, hours, days."""
    assert keys.period_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "30", "d", "1w", "1.5h", "-1d", "1e9d", "30 d"])
def test_other_periods_are_refused(text: str) -> None:
    """Anything but a positive whole number and m, h or d: ConfigError."""
    with pytest.raises(ConfigError, match="a period is"):
        keys.period_seconds(text)


def test_errors_pickle_and_principals_compare() -> None:
    """InvalidKey and Forbidden survive pickle; principals are values."""
    for error in (InvalidKey(), Forbidden("no")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
    assert principal("agent") == principal("agent") != principal("admin")
