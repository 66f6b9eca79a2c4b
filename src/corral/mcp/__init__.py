"""corral in front of MCP servers: a proxy whose tools are the upstream servers' tools the
policy allows, every call governed by the same gateway as an in-process call, and the
tools' definitions pinned against a server changing them after review.

- :mod:`corral.mcp.definitions`: policy names, effects (annotations only tighten), digests;
- :mod:`corral.mcp.pins`: the lock file and trust on first use;
- :mod:`corral.mcp.proxy`: the upstream clients, the downstream server, a run per session.

Uses the official ``mcp`` SDK for both sides. Imports the loop, the policy and the stores.
"""
