"""Which downstream session a request belongs to: each session is a run.

Over streamable HTTP a session is its ``Mcp-Session-Id`` (2025-11-25 clients); a stateless
(2026-07-28) request has none, so its client is the session: its address and the name it
gives (``clientInfo``); over stdio, the connection itself (one client per proxy process).

Imports the ``mcp`` SDK's request context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.context import ServerRequestContext

__all__ = ["connection_of", "session_of"]


def session_of(ctx: ServerRequestContext[Any]) -> str:
    """The downstream session a request belongs to (its run): ``http:<Mcp-Session-Id>``,
    ``client:<address>:<name>`` for a stateless client, ``stdio`` for a connection with
    no name of its own (see the module docstring)."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is None:
        return "stdio"
    found = headers.get("mcp-session-id")
    if found:
        return f"http:{found}"
    peer = getattr(getattr(request, "client", None), "host", None) or "unknown"
    info = (ctx.meta or {}).get("io.modelcontextprotocol/clientInfo")
    name = info.get("name") if isinstance(info, Mapping) else None
    return f"client:{peer}:{name or '-'}"


def connection_of(ctx: ServerRequestContext[Any]) -> Any:
    """The SDK's connection a request came on (its ``exit_stack`` unwinds when it closes:
    a stdio client gone, an HTTP session deleted or timed out), or None. The SDK gives
    handlers no public way to it yet: read from the request's session."""
    connection = getattr(ctx.session, "_connection", None)
    if connection is None or not hasattr(connection, "exit_stack"):
        return None
    return connection
