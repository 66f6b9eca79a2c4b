"""``corral keys create | list | revoke``: the token printed once and accepted, the listing
without secrets, revocation, the ``--json`` shapes, and one-line errors with their exit
codes."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli.app import app
from corral.controls.keys import authenticate
from corral.exceptions import InvalidKey
from corral.record.audit import records, verify
from corral.stores.sqlite import SQLiteStore

ROW = ["id", "tenant", "role", "name", "created", "expires", "revoked", "created_by"]


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=60
    )


def invoke(*args: str) -> Any:
    """The command in this process."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the test's store lives (``create`` makes it)."""
    return tmp_path / "corral.db"


@pytest.fixture
def db(path: Path) -> str:
    """The URL of a new store (no ``keys`` command creates one)."""
    SQLiteStore(path).close()
    return f"sqlite:///{path}"


def test_create_prints_the_token_alone_on_stdout_once(db: str, path: Path) -> None:
    """The token is stdout's one line (``$(...)`` keeps it), the id and warning go to
    stderr, the token authenticates, and the store holds no trace of it."""
    made = corral_cli(
        "keys", "create", "--tenant", "acme", "--role", "agent", "--name", "billing-bot",
        "--as", "alice", "--db", db,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("crl_")
    err = made.stderr.splitlines()
    assert err[0] == f"store: {db}"
    assert err[1] == f"created key {token[4:20]} 'billing-bot': agent of tenant acme"
    assert "shown once and never again" in err[2]
    with SQLiteStore(path) as store:
        who = authenticate(store, token)
        assert (who.tenant, who.role, who.name) == ("acme", "agent", "billing-bot")
        assert [(r.kind, r.actor) for r in records(store)] == [("api_key", "alice")]
    files = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    assert not any(token[21:].encode() in p.read_bytes() for p in files)


def test_list_shows_ids_and_roles_never_secrets(db: str, path: Path) -> None:
    """The table and the JSON list every key (a global one too) with no token or digest;
    ``--tenant`` keeps that tenant's."""
    a = invoke("keys", "create", "--tenant", "acme", "--role", "approver", "--db", db)
    g = invoke("keys", "create", "--global", "--role", "admin", "--expires-in", "30d", "--db", db)
    invoke("keys", "create", "--tenant", "globex", "--role", "agent", "--db", db)
    tokens = [a.stdout.strip(), g.stdout.strip()]
    listed = invoke("keys", "list", "--db", db, "--json")
    assert listed.exit_code == 0
    body = json.loads(listed.stdout)
    assert body["store"] == db and body["count"] == 3
    assert [list(k) for k in body["keys"]] == [ROW] * 3
    first, second = body["keys"][:2]
    assert (first["tenant"], first["role"], first["expires"]) == ("acme", "approver", None)
    assert (second["tenant"], second["role"]) == (None, "admin")
    assert second["expires"].endswith("Z") and second["revoked"] is None
    with SQLiteStore(path) as store:
        digests = [k.digest for k in store.list_keys()]
    table = invoke("keys", "list", "--db", db).stdout
    for text in (listed.stdout, table):
        assert not any(t[21:] in text or t in text for t in tokens)
        assert not any(d in text for d in digests)
    assert "(global)" in table and "approver" in table and "globex" in table
    only = json.loads(invoke("keys", "list", "--tenant", "acme", "--db", db, "--json").stdout)
    assert [k["tenant"] for k in only["keys"]] == ["acme"]


def test_revoke_refuses_the_key_and_says_so(db: str, path: Path) -> None:
    """``revoke`` refuses the key from then on; it stays listed as revoked; a second revoke
    exits 0 saying it already was; both changes are audited."""
    token = invoke("keys", "create", "--tenant", "acme", "--role", "agent", "--db", db).stdout
    key_id = token.strip()[4:20]
    done = invoke("keys", "revoke", key_id, "--as", "bob", "--db", db)
    assert done.exit_code == 0 and done.stdout == f"revoked key {key_id}: agent of tenant acme\n"
    again = invoke("keys", "revoke", key_id, "--db", db, "--json")
    body = json.loads(again.stdout)
    assert again.exit_code == 0 and body["revoked"] is False
    assert body["key"]["revoked"].endswith("Z") and list(body["key"]) == ROW
    with SQLiteStore(path) as store:
        with pytest.raises(InvalidKey):
            authenticate(store, token.strip())
        kinds = [(r.data["action"], r.actor) for r in records(store) if r.kind == "api_key"]
        assert kinds == [("create", f"{_user()}@{socket.gethostname()}"), ("revoke", "bob")]
        assert verify(store).ok


def _user() -> str:
    import getpass
    import os

    return os.environ.get("USER") or os.environ.get("USERNAME") or getpass.getuser()


def test_create_json_holds_the_token_and_the_row(db: str) -> None:
    """``create --json``: the store, the token, and the key's row."""
    result = invoke("keys", "create", "--tenant", "acme", "--role", "admin", "--db", db, "--json")
    body = json.loads(result.stdout)
    assert result.exit_code == 0 and list(body) == ["store", "token", "key"]
    assert body["token"][4:20] == body["key"]["id"] and list(body["key"]) == ROW


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "--role", "agent"], "give --tenant T (the tenant the key belongs to) or"),
        (["create", "--role", "admin", "--tenant", "a", "--global"], "not both"),
        (["create", "--role", "owner", "--tenant", "a"], "role must be one of agent, approver"),
        (["create", "--role", "agent", "--global"], "only an admin key can be global"),
        (["create", "--role", "agent", "--tenant", " "], "a key's tenant is a tenant's id"),
        (["create", "--role", "agent", "--tenant", "a", "--expires-in", "1w"], "a period is"),
        (["create", "--role", "agent", "--tenant", "a", "--as", " "], "--as needs a value"),
        (["revoke", "crl_0123456789abcdef_" + "x" * 43], "not its token"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_create_nothing(
    db: str, path: Path, args: list[str], message: str
) -> None:
    """A bad role, tenant, period or flag mix: exit 2, one line naming it, no key made, and
    a token given where an id belongs is never echoed back."""
    result = invoke("keys", *args, "--db", db)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"corral keys {args[0]}: ")
    assert message in lines[0]
    assert "x" * 43 not in result.output
    with SQLiteStore(path) as store:
        assert store.list_keys() == [] and store.audit_records() == []


def test_an_unknown_key_id_exits_1(db: str) -> None:
    """Revoking an id no key has: exit 1, one line saying so."""
    invoke("keys", "create", "--tenant", "acme", "--role", "agent", "--db", db)
    result = invoke("keys", "revoke", "0123456789abcdef", "--db", db)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"corral keys revoke: no key '0123456789abcdef' in {db} (corral keys list shows them)"
    )


def test_no_keys_command_creates_a_store(tmp_path: Path) -> None:
    """Where no store exists, each command exits 1 pointing at ``corral init``, and leaves
    none behind."""
    path = tmp_path / "none.db"
    for args in (
        ["list"],
        ["revoke", "0123456789abcdef"],
        ["create", "--global", "--role", "admin"],
    ):
        result = invoke("keys", *args, "--db", f"sqlite:///{path}")
        assert result.exit_code == 1 and "no corral store" in result.stderr
        assert "corral init" in result.stderr
    assert not path.exists()


def test_an_empty_listing_says_so(db: str) -> None:
    """No keys yet: one line, not an empty table."""
    assert invoke("keys", "list", "--db", db).stdout.strip() == "No keys yet."
    assert "No keys of tenant 'x'." in invoke("keys", "list", "--tenant", "x", "--db", db).stdout


def test_a_key_table_row_is_what_the_database_holds(db: str, path: Path) -> None:
    """The row's columns are the table's, none holding the secret (read with sqlite3)."""
    token = invoke("keys", "create", "--tenant", "acme", "--role", "agent", "--db", db).stdout
    conn = sqlite3.connect(path)
    try:
        names = [d[1] for d in conn.execute("PRAGMA table_info(corral_api_keys)")]
        rows = conn.execute("SELECT * FROM corral_api_keys").fetchall()
    finally:
        conn.close()
    assert names == ["id", "tenant", "role", "name", "digest", "created", "expires", "revoked",
                     "created_by"]  # fmt: skip
    assert token.strip()[21:] not in repr(rows)
