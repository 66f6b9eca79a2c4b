"""The MCP proxy's added latency: ``tools/call`` through ``corral mcp serve`` against the same
call made directly to the same server, over stdio, in the same run.

The server is ``mcp-server-time`` (from PyPI; its ``convert_time`` is deterministic and
cheap). The official ``mcp`` client drives, in interleaved rounds so that both sides see the
same machine load:

- ``direct``: the client spawns ``python -m mcp_server_time`` and calls it;
- ``proxied``: the client spawns ``python -m corral mcp serve`` (a SQLite store in a
  temporary folder), which spawns the same server and governs each call (allowlist,
  arguments, budgets, output checks, the audit record).

Printed: p50/p99 of each in milliseconds, and what the proxy adds (proxied minus direct, at
each percentile). Target (issue 16): at most 1 ms p50 added on stdio. The proxy's stdio hop
counts in it: a proxied call crosses two pipes and two JSON-RPC codecs instead of one.

    python bench/mcp_proxy.py [--calls 300] [--rounds 5] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

POLICY = {
    "tools": {
        "allow": ["time.convert_time"],
        "specs": {"time.convert_time": {"effect": "read", "cache": False}},
    },
    "budgets": {"max_tool_calls": 1_000_000_000, "max_steps": 1_000_000_000},
}


def args(i: int) -> dict[str, str]:
    """The i-th call's arguments: a different time each (the same call made again and again
    is what loop detection is for)."""
    return {
        "source_timezone": "UTC",
        "time": f"{i // 60 % 24:02d}:{i % 60:02d}",
        "target_timezone": "Asia/Tokyo",
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(params: Any, name: str, calls: int) -> list[float]:
    """Seconds per call of ``name`` over one connection (after two warm-up calls)."""
    from mcp import Client

    out: list[float] = []
    async with Client(params, cache=None) as client:
        for i in range(2):
            await client.call_tool(name, args(i))
        for i in range(2, calls + 2):
            start = time.perf_counter()
            result = await client.call_tool(name, args(i))
            out.append(time.perf_counter() - start)
            if result.is_error:
                raise SystemExit(f"{name} failed: {result.content}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="a few calls (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    if opts.quick:
        opts.calls, opts.rounds = 10, 1
    try:
        import mcp  # noqa: F401
        import mcp_server_time  # noqa: F401
    except ImportError as exc:
        print(f"needs the mcp extra and mcp-server-time: {exc.name} is missing", file=sys.stderr)
        return 2
    from mcp import StdioServerParameters

    with tempfile.TemporaryDirectory() as folder:
        policy = Path(folder) / "policy.json"
        policy.write_text(json.dumps(POLICY))
        server = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
        env = dict(os.environ)  # the same interpreter and import path on both sides
        direct = StdioServerParameters(command=server[0], args=server[1:], env=env)
        proxied = StdioServerParameters(
            command=sys.executable,
            args=[
                "-m",
                "corral",
                "mcp",
                "serve",
                "--policy",
                str(policy),
                "--db",
                f"sqlite:///{Path(folder) / 'corral.db'}",
                "--stdio",
                "time=" + " ".join(server),
            ],
            env=env,
        )
        sides: dict[str, list[float]] = {"direct": [], "proxied": []}
        for _ in range(opts.rounds):
            sides["direct"] += anyio.run(timed, direct, "convert_time", opts.calls)
            sides["proxied"] += anyio.run(timed, proxied, "time.convert_time", opts.calls)
    figures: dict[str, Any] = {"calls": len(sides["direct"]), "rounds": opts.rounds}
    for side, values in sides.items():
        figures[side] = {
            "p50_ms": round(percentile(values, 0.5) * 1000, 3),
            "p99_ms": round(percentile(values, 0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(values) * 1000, 3),
        }
    figures["added"] = {
        q: round(figures["proxied"][q] - figures["direct"][q], 3) for q in ("p50_ms", "p99_ms")
    }
    figures["ratio_p50"] = round(figures["proxied"]["p50_ms"] / figures["direct"]["p50_ms"], 2)
    if opts.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"{figures['calls']} calls a side, {opts.rounds} interleaved rounds, stdio")
    for side in ("direct", "proxied"):
        f = figures[side]
        print(f"  {side:<8} p50 {f['p50_ms']:7.3f} ms   p99 {f['p99_ms']:7.3f} ms")
    added = figures["added"]
    print(
        f"  added    p50 {added['p50_ms']:7.3f} ms   p99 {added['p99_ms']:7.3f} ms"
        f"   ({figures['ratio_p50']}x direct at p50; target: <= 1 ms p50 added)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
