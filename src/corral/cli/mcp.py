"""``corral mcp``: corral's policy in front of MCP servers.

- ``corral mcp serve --policy FILE --stdio NAME=COMMAND [--http NAME=URL] [--lock FILE]
  [--listen HOST:PORT] [--idle-timeout SECONDS] [--hold-approvals]``
  serves an MCP server on stdin/stdout (for desktop clients and agent frameworks that spawn
  one) whose tools are the upstreams' tools the policy allows, each call governed
  (:mod:`corral.mcp.proxy`). Nothing but the protocol is written to stdout.
- ``corral mcp pin --policy FILE --stdio ... [--lock FILE] [--json]`` lists the upstreams'
  allowed tools and writes their definitions' digests to the lock file, saying what changed
  since the last pin.

Imports the shared ``_common``, ``_output``; the MCP package (and the ``mcp`` SDK) when a
command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
)
from corral.cli._mcp import (
    default_lock,
    freeze_heap,
    http_app,
    policy_of,
    proxy_parts,
    serve_http,
    upstreams_of,
)
from corral.cli._output import console, echo, print_json

#: A session's idle timeout unless told (seconds; ``corral.mcp.proxy.IDLE_SECONDS``, kept
#: here so that the command's help does not import the SDK).
IDLE_SECONDS = 1800.0

mcp_app = group("mcp", help="Put corral's policy in front of MCP servers: proxy, pin definitions.")

PolicyOption = Annotated[
    Path, typer.Option("--policy", help="The policy file (YAML or JSON) the proxy enforces.")
]
StdioOption = Annotated[
    list[str] | None,
    typer.Option(
        "--stdio",
        help="An upstream MCP server run as a command over stdio: NAME=COMMAND (repeatable).",
    ),
]
HttpOption = Annotated[
    list[str] | None,
    typer.Option(
        "--http", help="An upstream MCP server over streamable HTTP: NAME=URL (repeatable)."
    ),
]
LockOption = Annotated[
    Path | None,
    typer.Option(
        "--lock",
        help="The lock file of pinned tool definitions (default: POLICY.mcp-lock.json beside "
        "the policy; without one, definitions are pinned as first seen).",
    ),
]


IdleOption = Annotated[
    float,
    typer.Option(
        "--idle-timeout",
        min=1.0,
        help="Seconds a session may go without a request before it is ended, with its run "
        "(HTTP sessions and stateless clients; default 1800).",
    ),
]


@mcp_app.command()
def serve(
    policy: PolicyOption,
    stdio: StdioOption = None,
    http: HttpOption = None,
    lock: LockOption = None,
    db: DbOption = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="The runs' tenant.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="The runs' agent.")] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            help="Serve streamable HTTP on HOST:PORT (at /mcp) instead of stdio (needs the "
            "serve extra).",
        ),
    ] = None,
    idle_timeout: IdleOption = IDLE_SECONDS,
    hold_approvals: Annotated[
        bool,
        typer.Option(
            "--hold-approvals",
            help="Hold every client's call that waits for an approval, instead of answering "
            "input_required to 2026-07-28 clients.",
        ),
    ] = False,
) -> None:
    """Serve an MCP server on stdio whose tools are the upstreams', each call governed."""

    def go() -> int:
        import anyio

        from corral.mcp.proxy import Proxy

        rules, upstreams, pins = proxy_parts(policy, stdio, http, lock)
        address = None if listen is None else _host_port(listen)
        store, _ = open_db(db, create=True)  # says which store on stderr: stdout is the protocol

        async def main() -> None:
            from corral.mcp.stdio import stdio_streams

            async with Proxy(
                rules,
                upstreams,
                store=store,
                pins=pins,
                tenant=tenant,
                agent=agent,
                idle_seconds=idle_timeout,
                input_required=not hold_approvals,
            ) as proxy:
                server = proxy.server()
                freeze_heap()
                if address is not None:
                    host, port = address
                    banner = f"corral mcp: http://{host}:{port}/mcp; Ctrl-C stops"
                    await serve_http(http_app(proxy, host), host, port, banner)
                    return
                async with stdio_streams() as (read, write):
                    await server.run(read, write, server.create_initialization_options())

        try:
            anyio.run(main)
        finally:
            store.close()
        return EXIT_OK

    raise typer.Exit(guarded("mcp serve", go))


@mcp_app.command()
def pin(
    policy: PolicyOption,
    stdio: StdioOption = None,
    http: HttpOption = None,
    lock: LockOption = None,
    json_out: JsonOption = False,
) -> None:
    """Pin the allowed upstream tools' definitions: write their digests to the lock file."""

    def go() -> int:
        import anyio

        from corral.mcp.definitions import wire_definition
        from corral.mcp.openworld import open_world_warnings
        from corral.mcp.pins import read_lock, write_lock
        from corral.mcp.proxy import Proxy
        from corral.policy.locks import Pinned
        from corral.stores.memory import MemoryStore

        rules = policy_of(policy)
        upstreams = upstreams_of(stdio, http)
        path = lock if lock is not None else default_lock(policy)
        before = read_lock(path) if path.exists() else {}
        found: dict[str, str] = {}
        pinned: dict[str, Pinned] = {}
        missing: list[str] = []
        warnings: list[str] = []

        async def main() -> None:
            async with Proxy(rules, upstreams, store=MemoryStore()) as proxy:
                for name in rules.tools.allow:
                    entry = proxy.listed.get(name)
                    if entry is None:
                        if name.split(".", 1)[0] in proxy.upstreams:
                            missing.append(name)
                        continue
                    found[name] = entry.digest
                    pinned[name] = Pinned(entry.digest, wire_definition(entry.tool))
                warnings.extend(
                    open_world_warnings(rules, {n: p.definition for n, p in pinned.items()})
                )

        anyio.run(main)
        write_lock(path, pinned)
        rows = []
        for name, value in sorted(found.items()):
            change = "new" if name not in before else "same" if before[name] == value else "changed"
            rows.append({"tool": name, "digest": value, "change": change})
        dropped = sorted(set(before) - set(found))
        if json_out:
            print_json(
                {
                    "lock": str(path),
                    "tools": rows,
                    "dropped": dropped,
                    "missing": missing,
                    "warnings": warnings,
                }
            )
            return EXIT_OK
        out = console()
        for row in rows:
            out.print(f"{row['tool']:<40} {row['digest'][:16]}  {row['change']}")
        for name in dropped:
            out.print(f"{name:<40} {'-':<16}  dropped (no longer listed or allowed)")
        for name in missing:
            out.print(f"{name:<40} {'-':<16}  allowed, but its server does not list it")
        for warning in warnings:
            echo(f"warning: {warning}", err=True)
        echo(f"pinned {len(found)} tool definition(s) in {path}", err=True)
        return EXIT_OK

    raise typer.Exit(guarded("mcp pin", go))


@mcp_app.command()
def diff(
    db: DbOption = None,
    json_out: JsonOption = False,
    server: Annotated[
        str | None, typer.Option("--server", help="Only this upstream's tools.")
    ] = None,
    tool: Annotated[
        str | None, typer.Option("--tool", help="Only this tool (SERVER.TOOL, or its own name).")
    ] = None,
) -> None:
    """List the pending tool-definition changes, each with a diff of its definition."""

    def go() -> int:
        from corral.mcp.queue import diff as diff_of
        from corral.mcp.queue import pending

        store, shown = open_db(db, announce=not json_out)
        try:
            changes = pending(store, server=server, tool=tool)
        finally:
            store.close()
        if json_out:
            rows = [_change_row(c, diff_of(c)) for c in changes]
            print_json({"store": shown, "count": len(changes), "changes": rows})
            return EXIT_OK
        out = console()
        for change in changes:
            was = change.pinned[:16] if change.pinned else "not pinned"
            out.print(
                f"{change.name}: {was} -> {change.digest[:16]}, first seen "
                f"{iso(change.first_seen)} by {change.seen_by or '-'}",
                markup=False,
                highlight=False,
            )
            out.print(diff_of(change), markup=False, highlight=False)
        echo(f"{len(changes)} pending definition change(s)", err=True)
        return EXIT_OK

    raise typer.Exit(guarded("mcp diff", go))


LockPolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="The policy file: its lock file is POLICY.mcp-lock.json."),
]
ToolArgument = Annotated[str, typer.Argument(help="The tool, SERVER.TOOL (corral mcp diff).")]
DigestOption = Annotated[
    str | None,
    typer.Option("--digest", help="The new definition's digest (or its first characters)."),
]
ReasonText = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit log).")]


@mcp_app.command("approve-definition")
def approve_definition(
    name: ToolArgument,
    digest: DigestOption = None,
    policy: LockPolicyOption = None,
    lock: LockOption = None,
    actor: ActorOption = None,
    reason: ReasonText = "",
    db: DbOption = None,
) -> None:
    """Accept a tool's new definition: pin it in the lock file, mark it approved, audit it."""
    raise typer.Exit(
        guarded(
            "mcp approve-definition",
            lambda: _decide(
                name,
                "approved",
                digest=digest,
                policy=policy,
                lock=lock,
                actor=actor,
                reason=reason,
                db=db,
            ),
        )
    )


@mcp_app.command("reject-definition")
def reject_definition(
    name: ToolArgument,
    digest: DigestOption = None,
    actor: ActorOption = None,
    reason: ReasonText = "",
    db: DbOption = None,
) -> None:
    """Refuse a tool's new definition: it stays hidden and denied; mark it rejected, audit it."""
    raise typer.Exit(
        guarded(
            "mcp reject-definition",
            lambda: _decide(
                name,
                "rejected",
                digest=digest,
                policy=None,
                lock=None,
                actor=actor,
                reason=reason,
                db=db,
            ),
        )
    )


def _decide(
    name: str,
    status: Any,
    *,
    digest: str | None,
    policy: Path | None,
    lock: Path | None,
    actor: str | None,
    reason: str,
    db: str | None,
) -> int:
    from corral.controls.killswitch import default_actor
    from corral.mcp.queue import QueueError, decide, pending
    from corral.policy.locks import Pinned, read_pins, write_pins

    store, _ = open_db(db)
    try:
        path: Path | None = None
        if status == "approved":
            if (policy is None) == (lock is None):
                raise Fail(EXIT_USAGE, "name the lock file to update: --policy FILE or --lock FILE")
            path = lock if lock is not None else default_lock(policy)  # type: ignore[arg-type]
            if not path.exists():
                raise Fail(
                    EXIT_USAGE,
                    f"no lock file at {path}: pin the tools first (corral mcp pin); a proxy "
                    "without a lock trusts each definition as it first sees it",
                )
        who = actor if actor is not None else default_actor()
        found = [c for c in pending(store) if c.name == name]
        if digest is not None:
            found = [c for c in found if c.digest.startswith(digest)]
        if len(found) == 1 and path is not None:
            pins = read_pins(path)  # first: a decision recorded means the lock has it
            pins[name] = Pinned(found[0].digest, found[0].definition)
            write_pins(path, pins)
        try:
            done = decide(store, name, status=status, by=who, digest=digest, reason=reason)
        except QueueError as exc:
            raise Fail(EXIT_FAILED, str(exc)) from None
    finally:
        store.close()
    verb = "approved: pinned in " + str(path) if path is not None else "rejected: it stays hidden"
    echo(f"{name} {done.digest[:16]} {verb}", err=True)
    return EXIT_OK


def _change_row(change: Any, text: str) -> dict[str, Any]:
    return {
        "name": change.name,
        "server": change.server,
        "tool": change.tool,
        "pinned": change.pinned,
        "digest": change.digest,
        "first_seen": iso(change.first_seen),
        "seen_by": change.seen_by,
        "status": change.status,
        "definition": change.definition,
        "pinned_definition": change.pinned_definition,
        "diff": text,
    }


def iso(at: float) -> str:
    """``at`` (epoch seconds) in ISO 8601, UTC."""
    import datetime

    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Fail(EXIT_USAGE, f"--listen {text!r}: give HOST:PORT (127.0.0.1:8421)")
    return host.strip("[]"), int(port)
