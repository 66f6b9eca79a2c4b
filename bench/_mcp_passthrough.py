"""A bare MCP proxy on the official SDK, for ``bench/mcp_proxy.py``: the floor of any proxy
built on it.

It lists the one upstream's tools and forwards each ``tools/call`` to it as it is, through the
same SDK parts as ``corral mcp serve`` (an ``mcp`` low-level ``Server`` downstream, an
``mcp.Client`` upstream), with nothing governed: no policy, no store, no audit. Downstream it
speaks stdio through the SDK's ``stdio_server`` (``--transport sdk``) or through corral's own
transport (``--transport corral``, :mod:`corral.mcp.stdio`, the one ``corral mcp serve``
uses), so that what corral's governance adds is the proxy's time minus the second one.

    python bench/_mcp_passthrough.py --transport sdk|corral COMMAND [ARGS...]
"""

from __future__ import annotations

import sys
from typing import Any

import anyio


async def serve(transport: str, command: list[str]) -> None:
    import mcp_types as types
    from mcp import Client, StdioServerParameters
    from mcp.server.lowlevel import Server

    if transport == "corral":
        from corral.mcp.stdio import stdio_streams as streams
    else:
        from mcp.server.stdio import stdio_server as streams

    upstream = StdioServerParameters(command=command[0], args=command[1:])
    async with Client(upstream, cache=None) as client:

        async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
            page = await client.list_tools()
            return types.ListToolsResult(tools=page.tools)

        async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
            return await client.call_tool(params.name, params.arguments or {})

        server: Any = Server("pass-through", on_list_tools=list_tools, on_call_tool=call_tool)
        async with streams() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[1] != "--transport" or sys.argv[2] not in ("sdk", "corral"):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    anyio.run(serve, sys.argv[2], sys.argv[3:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
