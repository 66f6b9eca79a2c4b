"""The MCP proxy's added latency: ``tools/call`` through ``corral mcp serve`` against the same
call made directly to the same server, and through a bare pass-through proxy on the same SDK
(the floor of any proxy built on it), over stdio, in the same run.

The server is ``mcp-server-time`` (from PyPI; its ``convert_time`` is deterministic and
cheap). The official ``mcp`` client drives, in interleaved rounds (the order of the sides
rotating from round to round) so that every side sees the same machine load:

- ``direct``: the client spawns ``python -m mcp_server_time`` and calls it;
- ``bare_sdk``: the client spawns ``bench/_mcp_passthrough.py --transport sdk``, a proxy on
  the SDK that forwards each call as it is (the SDK's ``stdio_server`` downstream, an
  ``mcp.Client`` upstream, nothing governed): what any proxy on this SDK adds;
- ``bare_corral``: the same pass-through on corral's stdio transport (``corral.mcp.stdio``,
  the one ``corral mcp serve`` uses, without the SDK's thread hop per line);
- ``proxied``: the client spawns ``python -m corral mcp serve`` (a SQLite store in a
  temporary folder; ``--commit group`` holds reads' events for a group commit), which spawns
  the same server and governs each call (allowlist, arguments, budgets, output checks, the
  audit record committed before the answer).

Printed: p50/p99 of each in milliseconds, and the CPU per call of the process the client
spawned (the server; for the others, the proxy without its upstream: steadier than wall time
on a busy machine); what the proxy adds (proxied minus direct, at each percentile); the floor
(each pass-through minus direct); and corral's share (proxied minus ``bare_corral``: the
governance alone). Target (issue 16): at most 1 ms p50 added on stdio.

    python bench/mcp_proxy.py [--calls 300] [--rounds 5] [--commit each|group] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
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


async def timed(params: Any, name: str, calls: int) -> tuple[list[float], float | None]:
    """Seconds per call of ``name`` over one connection (after two warm-up calls), and the
    CPU seconds per call of the process the client spawned (the server, or the proxy without
    its upstream; None where ``/proc`` cannot tell)."""
    from mcp import Client

    out: list[float] = []
    async with Client(params, cache=None) as client:
        for i in range(2):
            await client.call_tool(name, args(i))
        spawned = _children()
        before = _cpu(spawned)
        for i in range(2, calls + 2):
            start = time.perf_counter()
            result = await client.call_tool(name, args(i))
            out.append(time.perf_counter() - start)
            if result.is_error:
                raise SystemExit(f"{name} failed: {result.content}")
        after = _cpu(spawned)
    cpu = None if before is None or after is None else (after - before) / calls
    return out, cpu


def _children() -> list[int]:
    """The processes this one spawned (Linux ``/proc``; none elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                        found.append(int(entry))
    return found


def _cpu(pids: list[int]) -> float | None:
    """The CPU seconds (user and system, all threads) ``pids`` have used, or None."""
    if len(pids) != 1:
        return None
    try:
        fields = Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SIDES = ("direct", "bare_sdk", "bare_corral", "proxied")


def _sides(folder: Path, commit: str) -> dict[str, tuple[Any, str]]:
    """Each side's server parameters and the name of the tool it calls."""
    from mcp import StdioServerParameters

    policy = folder / "policy.json"
    policy.write_text(json.dumps(POLICY))
    server = [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]
    env = dict(os.environ)  # the same interpreter and import path on every side
    bare = str(Path(__file__).with_name("_mcp_passthrough.py"))
    db = f"sqlite:///{folder / 'corral.db'}" + ("?commit=group" if commit == "group" else "")
    proxy = ["-m", "corral", "mcp", "serve", "--policy", str(policy), "--db", db]
    return {
        "direct": (StdioServerParameters(command=server[0], args=server[1:], env=env), ""),
        "bare_sdk": (
            StdioServerParameters(
                command=sys.executable, args=[bare, "--transport", "sdk", *server], env=env
            ),
            "",
        ),
        "bare_corral": (
            StdioServerParameters(
                command=sys.executable, args=[bare, "--transport", "corral", *server], env=env
            ),
            "",
        ),
        "proxied": (
            StdioServerParameters(
                command=sys.executable,
                args=[*proxy, "--stdio", "time=" + " ".join(server)],
                env=env,
            ),
            "time.",
        ),
    }


def _minus(figures: dict[str, Any], side: str, base: str) -> dict[str, float]:
    return {q: round(figures[side][q] - figures[base][q], 3) for q in ("p50_ms", "p99_ms")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per side per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument(
        "--commit",
        choices=("each", "group"),
        default="each",
        help="the proxy store's commit mode (group: reads' events committed in groups)",
    )
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

    values: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory() as folder:
        sides = _sides(Path(folder), opts.commit)
        for r in range(opts.rounds):
            for side in SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]:
                params, prefix = sides[side]
                timings, used = anyio.run(timed, params, prefix + "convert_time", opts.calls)
                values[side] += timings
                if used is not None:
                    cpu[side].append(used)
    figures: dict[str, Any] = {
        "calls": len(values["direct"]),
        "rounds": opts.rounds,
        "commit": opts.commit,
    }
    for side, timings in values.items():
        figures[side] = {
            "p50_ms": round(percentile(timings, 0.5) * 1000, 3),
            "p99_ms": round(percentile(timings, 0.99) * 1000, 3),
            "mean_ms": round(statistics.fmean(timings) * 1000, 3),
            # the spawned process's CPU per call, median over rounds (less noisy than wall)
            "cpu_ms": round(statistics.median(cpu[side]) * 1000, 3) if cpu[side] else None,
        }
    figures["added"] = _minus(figures, "proxied", "direct")
    figures["floor"] = {
        "sdk": _minus(figures, "bare_sdk", "direct"),
        "corral_stdio": _minus(figures, "bare_corral", "direct"),
    }
    figures["corral"] = _minus(figures, "proxied", "bare_corral")
    figures["ratio_p50"] = round(figures["proxied"]["p50_ms"] / figures["direct"]["p50_ms"], 2)
    if opts.json:
        print(json.dumps(figures, indent=2))
        return 0
    _print(figures)
    return 0


def _print(figures: dict[str, Any]) -> None:
    print(
        f"{figures['calls']} calls a side, {figures['rounds']} interleaved rounds, stdio, "
        f"commit={figures['commit']}"
    )
    labels = {
        "direct": "direct",
        "bare_sdk": "pass-through, SDK stdio",
        "bare_corral": "pass-through, corral stdio",
        "proxied": "corral mcp serve",
    }
    for side in SIDES:
        f = figures[side]
        used = "" if f["cpu_ms"] is None else f"   cpu {f['cpu_ms']:6.3f} ms a call"
        print(f"  {labels[side]:<28} p50 {f['p50_ms']:7.3f} ms   p99 {f['p99_ms']:7.3f} ms{used}")
    rows = (
        ("added (proxied - direct)", figures["added"]),
        ("floor, SDK stdio", figures["floor"]["sdk"]),
        ("floor, corral stdio", figures["floor"]["corral_stdio"]),
        ("corral's share (governance)", figures["corral"]),
    )
    for label, f in rows:
        print(f"  {label:<28} p50 {f['p50_ms']:7.3f} ms   p99 {f['p99_ms']:7.3f} ms")
    print(f"  ({figures['ratio_p50']}x direct at p50; target: <= 1 ms p50 added)")


if __name__ == "__main__":
    sys.exit(main())
