"""``corral keys create | list | revoke``: the API keys ``corral serve`` will accept.

::

    corral keys create (--tenant T | --global) --role R [--name N] [--expires-in 30d]
                       [--as NAME] [--db URL] [--json]
    corral keys list [--tenant T] [--db URL] [--json]
    corral keys revoke KEY_ID [--as NAME] [--db URL] [--json]

A key belongs to one tenant, or with ``--global`` to every tenant (admin keys only), and
has a role: ``agent``, ``approver`` or ``admin`` (see :mod:`corral.controls.keys` for
what each may do). ``create`` prints the token once: alone on stdout (so
``TOKEN=$(corral keys create ...)`` keeps it), the key's id and a warning on stderr;
the store keeps only a digest of its secret, so it cannot be shown again. No command
here creates a store (``corral init`` does). ``list`` shows ids, tenants, roles,
names and times, never a secret or a digest. Creating and revoking are written to the
audit log (kind ``api_key``) with who (``--as``, default ``$USER@host``).

Exit codes: 0 done (``revoke`` of a key already revoked too: it stays revoked, and says
so); 1 no store there, no key with that id, or the store fails;
2 a usage error: an unknown role, neither or both of ``--tenant`` and ``--global``, a
global key that is not an admin's, a bad ``--expires-in`` (one line, never a
traceback).

``create --json`` prints ``{"store": str, "token": str, "key": row}``; ``list --json``
prints ``{"store": str, "count": int, "keys": [row, ...]}``; ``revoke --json`` prints
``{"store": str, "revoked": bool, "key": row}`` (``revoked`` false when it already
was). A row is ``{"id", "tenant", "role", "name", "created", "expires", "revoked",
"created_by"}``: ``tenant`` is ``null`` for a global key, times are ISO 8601 in UTC,
``expires`` and ``revoked`` ``null`` when none.

Imports the keys (:mod:`corral.controls.keys`), the stores' records and the shared
``_common`` and ``_format``; no other command module.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ActorOption,
    DbOption,
    Fail,
    JsonOption,
    group,
    guarded,
    open_db,
    quoted,
    read,
    tenant_option,
)
from corral.cli._format import console, echo, iso_seconds, print_json
from corral.controls import keys
from corral.record.views import key_row
from corral.stores.base import KeyRecord

keys_app = group("keys", help="Create, list and revoke the API keys of tenants and their roles.")

KeyTenant = Annotated[str | None, tenant_option("The tenant the key belongs to.")]
ListTenant = Annotated[str | None, tenant_option("Only this tenant's keys (no global ones).")]
Global = Annotated[
    bool, typer.Option("--global", help="An admin key for every tenant (instead of --tenant).")
]
RoleOption = Annotated[
    str, typer.Option("--role", help="agent, approver or admin (see docs/serve.md).")
]
Name = Annotated[str, typer.Option("--name", help="What the key is for (shown by list).")]
ExpiresIn = Annotated[
    str | None,
    typer.Option("--expires-in", help="Expire after this period: 15m, 12h, 30d (default never)."),
]
KeyId = Annotated[str, typer.Argument(help="The key's id (as list shows it).", show_default=False)]


@keys_app.command()
def create(
    role: RoleOption,
    tenant: KeyTenant = None,
    global_key: Global = False,
    name: Name = "",
    expires_in: ExpiresIn = None,
    by: ActorOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a key and print its token, once (the store keeps only a digest of it)."""

    def go() -> int:
        owner = _owner(tenant, global_key)
        checked = keys.check_role(role)
        keys.check_owner(owner, checked)
        lifetime = None if expires_in is None else keys.period_seconds(expires_in)
        if by is not None and not by.strip():
            raise Fail(EXIT_USAGE, "--as needs a value (who is creating the key)")
        store, url = open_db(db, announce=not json_out)
        new = keys.create_key(
            store, tenant=owner, role=checked, name=name, expires_in=lifetime, actor=by
        )
        if json_out:
            print_json({"store": url, "token": new.token, "key": key_row(new.key)})
            return EXIT_OK
        echo(new.token)
        echo(f"created {_describe(new.key)}", err=True)
        echo(
            "this token is shown once and never again: store it now "
            "(corral keeps only a digest of it)",
            err=True,
        )
        return EXIT_OK

    raise typer.Exit(guarded("keys create", go))


def _owner(tenant: str | None, global_key: bool) -> str | None:
    """The key's tenant: ``--tenant``, or ``None`` for ``--global``; one of them, not both."""
    if global_key and tenant is not None:
        raise Fail(EXIT_USAGE, "give --tenant or --global, not both: a key has one tenant or all")
    if not global_key and tenant is None:
        raise Fail(
            EXIT_USAGE,
            "give --tenant T (the tenant the key belongs to) or --global (an admin key for "
            "every tenant)",
        )
    return tenant


@keys_app.command("list")
def list_(
    tenant: ListTenant = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the keys (revoked ones too), oldest first; never their secrets."""

    def go() -> int:
        store, url = open_db(db, announce=not json_out)
        found: list[KeyRecord] = read("the keys", url, store.list_keys, tenant=tenant)
        rows = [key_row(k) for k in found]
        if json_out:
            print_json({"store": url, "count": len(rows), "keys": rows})
            return EXIT_OK
        out = console()
        if not rows:
            out.print("No keys" + (f" of tenant {tenant!r}." if tenant is not None else " yet."))
            return EXIT_OK
        table = Table(
            title=f"{len(rows)} key{'s' if len(rows) != 1 else ''}",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("id", no_wrap=True)
        table.add_column("tenant", overflow="fold", min_width=6)
        table.add_column("role", no_wrap=True)
        table.add_column("name", overflow="fold", min_width=4)
        for column in ("created", "expires", "revoked"):
            table.add_column(column, no_wrap=True)
        for r in rows:
            table.add_row(
                r["id"],
                "(global)" if r["tenant"] is None else r["tenant"],
                r["role"],
                r["name"],
                r["created"],
                r["expires"] or "-",
                r["revoked"] or "-",
                style="dim" if r["revoked"] else "",
            )
        out.print(table)
        return EXIT_OK

    raise typer.Exit(guarded("keys list", go))


@keys_app.command()
def revoke(
    key_id: KeyId,
    by: ActorOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Revoke a key: from now on it is refused (it stays listed, as revoked)."""

    def go() -> int:
        if key_id.startswith(keys.PREFIX):
            raise Fail(
                EXIT_USAGE, "give the key's id (16 hex digits, as list shows), not its token"
            )
        if by is not None and not by.strip():
            raise Fail(EXIT_USAGE, "--as needs a value (who is revoking the key)")
        store, url = open_db(db, announce=not json_out)
        try:
            now = keys.revoke_key(store, key_id, actor=by)
        except KeyError:
            raise Fail(
                EXIT_FAILED, f"no key {quoted(key_id)} in {url} (corral keys list shows them)"
            ) from None
        record = store.get_key(key_id)
        assert record is not None  # keys are never deleted
        if json_out:
            print_json({"store": url, "revoked": now, "key": key_row(record)})
        elif now:
            echo(f"revoked {_describe(record)}")
        else:
            when = iso_seconds(record.revoked) if record.revoked is not None else "?"
            echo(f"{_describe(record)} was already revoked (at {when})")
        return EXIT_OK

    raise typer.Exit(guarded("keys revoke", go))


def _describe(key: KeyRecord) -> str:
    whose = "every tenant (global)" if key.tenant is None else f"tenant {key.tenant}"
    named = f" {key.name!r}" if key.name else ""
    return f"key {key.id}{named}: {key.role} of {whose}"
