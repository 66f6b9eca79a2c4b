"""The MCP servers behind the proxy, and the tools they list.

An upstream is a command run over stdio or a streamable HTTP URL, reached through the SDK's
``mcp.Client``. Its tools are listed whole (every page) and named ``<server>.<tool>``
(:func:`corral.mcp.definitions.policy_name`), each kept with its wire definition and that
definition's digest, computed once per listing (the proxy looks at them on every call).

Imports the definitions' names and digests and the ``mcp`` SDK.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp import Client, StdioServerParameters

from corral.exceptions import ConfigError
from corral.mcp.definitions import policy_name, wire_definition, wire_digest

__all__ = ["Listed", "Upstream", "all_tools", "list_tools"]

log = logging.getLogger("corral")


@dataclass(frozen=True)
class Upstream:
    """An MCP server behind the proxy: a command run over stdio, or a streamable HTTP URL."""

    name: str
    target: StdioServerParameters | str


@dataclass
class Listed:
    """An upstream tool as listed: its server, its definition, the definition as it
    travels (without ``_meta``) and that one's digest."""

    upstream: str
    tool: types.Tool
    digest: str
    wire: dict[str, Any]


async def all_tools(client: Client) -> list[types.Tool]:
    """Every tool ``client``'s server lists, page after page (at most 1,000 pages)."""
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(1000):  # a server that pages for ever is cut off
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


async def list_tools(clients: Mapping[str, Client]) -> dict[str, Listed]:
    """Every upstream's tools by their names in the policy; an upstream that does not
    list them is left out (said in the log). Two tools mapping to one name: ConfigError."""
    listed: dict[str, Listed] = {}
    for server, client in clients.items():
        try:
            tools = await all_tools(client)
        except Exception as exc:
            log.warning("MCP upstream %s does not list its tools: %s", server, exc)
            continue
        for tool in tools:
            name = policy_name(server, tool.name)
            if name in listed:
                raise ConfigError(f"two upstream tools are both named {name}")
            wire = wire_definition(tool)
            listed[name] = Listed(server, tool, wire_digest(wire), wire)
    return listed
