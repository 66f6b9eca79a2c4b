"""``corral serve``: the control plane's HTTP API over a store (:mod:`corral.server`).

Serves, until stopped (Ctrl-C), the ``/v1`` API — agents' runs (start under a policy of
``--policy-dir``, authorize and report tool calls, reserve and settle model calls, end) and
the operators' (runs and timelines, approvals, the kill switch, the audit chain) —,
``/healthz``, ``/readyz``, ``/metrics`` and the API's OpenAPI document (``/openapi.json``,
browsable at ``/docs``). Every ``/v1`` request needs an API
key (``corral keys create``). The store is the same default as every command's; it is
created when missing, as by ``corral init``.

Exit codes: 0 stopped by Ctrl-C (SIGTERM ends it as the signal does); 1 the store cannot
be opened, the address is taken, or the ``serve`` extra is not installed; 2 an invalid
option, store URL or policy in ``--policy-dir``.

With ``--mcp-policy`` (and ``--mcp-stdio``/``--mcp-http`` upstreams) the same app serves the
MCP proxy at ``/mcp`` (:mod:`corral.mcp.proxy`, as ``corral mcp serve --listen``), its
sessions' runs in the same store.

Imports the shared ``_common``; the server (and FastAPI, uvicorn) when it starts; the MCP
command's helpers (and the ``mcp`` SDK) with ``--mcp-policy``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from corral.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    DbOption,
    Fail,
    guarded,
    one_line,
    open_db,
)
from corral.exceptions import ConfigError
from corral.secrets import EnvSecrets, FileSecrets, SecretProvider

if TYPE_CHECKING:
    from corral.stores.base import Store

#: The port ``corral serve`` listens on unless told.
DEFAULT_PORT = 8420


HostOption = Annotated[str, typer.Option("--host", help="Address to listen on.")]
PortOption = Annotated[
    int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
]
PolicyDirOption = Annotated[
    Path | None,
    typer.Option(
        "--policy-dir",
        help="Folder of the policies agents' runs start under (NAME.yaml is policy NAME).",
    ),
]
SecretsOption = Annotated[
    str | None,
    typer.Option(
        "--secrets",
        help="Where tools' credentials come from: 'env' (CORRAL_SECRET_* variables) or a "
        "folder (FileSecrets).",
    ),
]
AdvertiseOption = Annotated[
    str | None,
    typer.Option(
        "--advertise",
        help="Where other replicas reach this one (http://host:port): a request for a run "
        "another replica holds is passed on to it. Default: http://HOST:PORT (the machine's "
        "name for 0.0.0.0); 'none' for a single server.",
    ),
]
TakeoverOption = Annotated[
    float,
    typer.Option(
        "--takeover-after",
        min=1.0,
        help="Seconds without a heartbeat after which another replica's run is taken over "
        "when that replica cannot be reached.",
    ),
]
LogLevelOption = Annotated[
    str, typer.Option("--log-level", help="uvicorn's log level: debug, info, warning.")
]
McpPolicyOption = Annotated[
    Path | None,
    typer.Option(
        "--mcp-policy",
        help="Also serve the MCP proxy at /mcp, enforcing this policy (see corral mcp "
        "serve), its runs in the same store.",
    ),
]
McpStdioOption = Annotated[
    list[str] | None,
    typer.Option(
        "--mcp-stdio", help="An upstream MCP server over stdio: NAME=COMMAND (repeatable)."
    ),
]
McpHttpOption = Annotated[
    list[str] | None,
    typer.Option(
        "--mcp-http",
        help="An upstream MCP server over streamable HTTP: NAME=URL (repeatable).",
    ),
]
McpLockOption = Annotated[
    Path | None,
    typer.Option(
        "--mcp-lock",
        help="The MCP proxy's lock file of pinned tool definitions (default: "
        "POLICY.mcp-lock.json beside --mcp-policy).",
    ),
]
McpTenantOption = Annotated[
    str | None, typer.Option("--mcp-tenant", help="The MCP sessions' runs' tenant.")
]
McpIdleOption = Annotated[
    float,
    typer.Option(
        "--mcp-idle-timeout",
        min=1.0,
        help="Seconds an MCP session may go without a request before it is ended, with its run.",
    ),
]


def serve(
    db: DbOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = DEFAULT_PORT,
    policy_dir: PolicyDirOption = None,
    secrets: SecretsOption = None,
    advertise: AdvertiseOption = None,
    takeover_after: TakeoverOption = 90.0,
    log_level: LogLevelOption = "info",
    mcp_policy: McpPolicyOption = None,
    mcp_stdio: McpStdioOption = None,
    mcp_http: McpHttpOption = None,
    mcp_lock: McpLockOption = None,
    mcp_tenant: McpTenantOption = None,
    mcp_idle_timeout: McpIdleOption = 1800.0,
) -> None:
    """Serve the HTTP API of the control plane: runs, approvals, kill switch, audit."""

    def go() -> int:
        create_app, load_policies = _server()
        try:
            policies = load_policies(policy_dir)
        except ConfigError as exc:
            raise Fail(EXIT_USAGE, f"--policy-dir: {one_line(exc)}") from None
        provider = _secrets(secrets)
        if mcp_policy is None and (mcp_stdio or mcp_http or mcp_lock is not None):
            raise Fail(EXIT_USAGE, "--mcp-stdio, --mcp-http and --mcp-lock need --mcp-policy")
        proxied = None
        if mcp_policy is not None:
            from corral.cli._mcp import proxy_parts

            proxied = proxy_parts(mcp_policy, mcp_stdio, mcp_http, mcp_lock)
        address = _address(advertise, host, port)
        store, shown = open_db(db, create=True)
        shown_host = f"[{host}]" if ":" in host else host
        relaying = f"reached by other replicas at {address}" if address else "a single server"
        banner = (
            f"corral serve: http://{shown_host}:{port} (API documents at /docs"
            + ("; MCP at /mcp" if proxied else "")
            + f"); store {shown}; {len(policies)} named policies; {relaying}; Ctrl-C stops"
        )
        app = create_app(
            store,
            policies=policies,
            secrets=provider,
            address=address,
            takeover_after=takeover_after,
        )
        try:
            if proxied is not None:
                listened = _serve_with_mcp(app, proxied, store, host, port, banner, log_level,
                                           mcp_tenant, mcp_idle_timeout)  # fmt: skip
            else:
                listened = _serve_plain(app, host, port, banner, log_level)
        finally:
            store.close()
        if not listened:
            raise Fail(EXIT_FAILED, f"could not listen on {shown_host}:{port}")
        return EXIT_OK

    raise typer.Exit(guarded("serve", go))


def _server() -> tuple[Any, Any]:
    """The server's ``create_app`` and ``load_policies``, or a failure naming the extra
    to install when FastAPI or uvicorn is missing."""
    try:
        import uvicorn  # noqa: F401  (either way of serving needs it)

        from corral.server import create_app
        from corral.server.runs import load_policies
    except ImportError as exc:
        raise Fail(
            EXIT_FAILED,
            f"the server needs the serve extra ({exc.name} is missing): "
            "pip install 'corral[serve]'",
        ) from None
    return create_app, load_policies


def _serve_plain(app: Any, host: str, port: int, banner: str, log_level: str) -> bool:
    """Serve the control plane alone with uvicorn until Ctrl-C or SIGTERM; whether it
    listened."""
    import uvicorn

    print(banner, file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn hands Ctrl-C back once down
        server.run()
    return bool(server.started)


def _serve_with_mcp(
    control: Any,
    proxied: tuple[Any, Any, Any],
    store: Store,
    host: str,
    port: int,
    banner: str,
    log_level: str,
    tenant: str | None,
    idle: float,
) -> bool:
    """Serve the control plane and the MCP proxy (``/mcp``) from one ASGI app over one store
    until SIGINT or SIGTERM, the MCP sessions' runs ended before the process ends."""
    import anyio

    from corral.cli._mcp import http_app, serve_http
    from corral.mcp.proxy import Proxy

    rules, upstreams, pins = proxied

    async def main() -> bool:
        async with Proxy(
            rules, upstreams, store=store, pins=pins, tenant=tenant, idle_seconds=idle
        ) as proxy:
            mcp = http_app(proxy, host)

            async def app(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "http" and scope["path"] in ("/mcp", "/mcp/"):
                    await mcp(scope, receive, send)
                else:  # the control plane, its lifespan included
                    await control(scope, receive, send)

            async with mcp.router.lifespan_context(mcp):
                return await serve_http(app, host, port, banner, log_level)

    listened: bool = anyio.run(main)
    return listened


def _address(advertise: str | None, host: str, port: int) -> str | None:
    """Where other replicas reach this server: ``--advertise`` as given (``none``: nowhere,
    one server), else ``http://HOST:PORT`` (the machine's name when listening on every
    address; none for port 0, which is not known before the server listens)."""
    if advertise is not None:
        if advertise.lower() == "none":
            return None
        url = _base_url(advertise)
        if url is None:
            raise Fail(EXIT_USAGE, f"--advertise: {advertise!r} is not an http(s)://host:port URL")
        return url
    if port == 0:
        return None
    name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def _base_url(text: str) -> str | None:
    """``text`` as a base URL (scheme and host, no path), or None when it is not one."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _secrets(where: str | None) -> SecretProvider | None:
    """The secret provider ``--secrets`` names."""
    if where is None:
        return None
    if where == "env":
        return EnvSecrets()
    if not Path(where).is_dir():
        raise Fail(EXIT_USAGE, f"--secrets: 'env' or a folder of secrets, got {where!r}")
    return FileSecrets(where)
