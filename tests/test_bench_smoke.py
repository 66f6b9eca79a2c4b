"""The peers and soak benchmarks run to the end and report every case (timings not judged).

Each bench runs in a subprocess with ``--quick``, as CI's smoke of it: a few iterations
of every case, nothing asserted about time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORRAL_CASES = {
    "corral.allow.memory",
    "corral.allow.sqlite",
    "corral.async",
    "corral.write.sqlite",
    "loop.corral.memory",
    "loop.corral.sqlite",
}
PEERS = {  # case -> the module it needs
    "agt.intercept": "agent_os",
    "agt.composite": "agent_os",
    "agt.use_tool": "agent_os",
    "loop.pydantic_ai": "pydantic_ai",
    "loop.openai_agents": "agents",
}
# Runs bench/peers.py with the peers' packages made unimportable, as where they are not
# installed.
WITHOUT_PEERS = """
import runpy, sys
BLOCKED = {"agent_os", "pydantic_ai", "agents"}
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ["bench/peers.py", "--quick"]
runpy.run_path("bench/peers.py", run_name="__main__")
"""


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_peers_quick_reports_every_case_with_figures() -> None:
    """`bench/peers.py --quick --json` exits 0 with figures for every corral case and peer."""
    done = bench("bench/peers.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    cases = out["cases"]
    assert CORRAL_CASES | set(PEERS) <= set(cases)
    for key in CORRAL_CASES:
        figures = cases[key]["figures"]
        assert len(next(iter(figures.values()))["rounds"]) == out["rounds"] == 2
    assert cases["corral.allow.memory"]["figures"]["overhead_p50"]["median"] > 0
    assert cases["loop.corral.memory"]["figures"]["run10_p50"]["median"] > 0
    for key, module in PEERS.items():
        if installed(module):
            assert "figures" in cases[key], cases[key]
            assert cases[key]["figures"]["p50" if key.startswith("agt") else "run10_p50"]
        else:
            assert "not installed" in cases[key]["missing"]
    assert out["ratios"]["async_over_sync"]["target"] == "<= 1.3"
    assert {t["case"] for t in out["targets"]} >= {"corral.allow.sqlite", "loop.corral.sqlite"}


def test_peers_not_installed_are_reported_in_the_table() -> None:
    """Without the peers' packages the table still prints, each peer marked not installed."""
    done = bench("-c", WITHOUT_PEERS)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for label in (
        "corral Run.call, read, memory://",
        "corral Run.call, read, SQLite",
        "corral AsyncRun.call, async tool",
        "corral write, durable claim, SQLite",
        "corral.run loop, memory://",
        "corral.run loop, SQLite",
        "AsyncRun.call / Run.call",
    ):
        assert label in table, label
    assert table.count("not installed") >= len(PEERS)
    assert "AGT ToolUsingAgent._use_tool" in table
    assert "Traceback" not in done.stderr


def test_soak_quick_reports_growth_after_warmup() -> None:
    """`bench/soak.py --quick` exits 0 and reports RSS, thread and fd growth after warm-up."""
    done = bench("bench/soak.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["runs"] == 300 and out["errors"] == []
    assert set(out["growth_after_warmup"]) >= {"rss_mb", "threads", "fds"}
    assert out["baseline"]["runs"] >= out["warmup_runs"]
    assert out["last"]["rss_mb"] > 0 and out["last"]["fds"] > 0
    assert "runs     300/300" in done.stderr  # the progress line
    table = bench("bench/soak.py", "--quick", "--runs", "60")
    assert table.returncode == 0, table.stderr
    assert "RSS MB" in table.stdout and "open fds" in table.stdout


def test_the_serve_decisions_bench_runs_a_server_and_reports_every_figure() -> None:
    """bench/serve_decisions.py --quick: a real corral serve in a subprocess, driven over
    sockets; every figure reported, no errors (timings not judged)."""
    if not installed("uvicorn"):
        import pytest

        pytest.skip("corral serve needs the serve extra")
    done = bench("bench/serve_decisions.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["decisions"] > 0 and figures["errors"] == 0
    for name in ("bare", "authorize", "report"):
        p50, p99 = figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"]
        assert 0 < p50 <= p99


def test_the_mcp_proxy_bench_reports_both_sides() -> None:
    """bench/mcp_proxy.py --quick: the time server directly and through corral mcp serve,
    both over stdio; every figure reported (timings not judged)."""
    if not (installed("mcp") and installed("mcp_server_time")):
        import pytest

        pytest.skip("the MCP proxy bench needs the mcp extra and mcp-server-time")
    done = bench("bench/mcp_proxy.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    for side in ("direct", "bare", "proxied"):
        assert 0 < figures[side]["p50_ms"] <= figures[side]["p99_ms"]
    for share in ("added", "floor", "corral"):
        assert set(figures[share]) == {"p50_ms", "p99_ms"}


def test_the_frameworks_bench_measures_each_installed_framework() -> None:
    """bench/frameworks.py --quick: each installed framework alone and governed by its
    adapter, in one process (timings not judged); one not installed is reported skipped."""
    done = bench("bench/frameworks.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["target"] == 1.10
    for name, module in (("openai-agents", "agents"), ("pydantic-ai", "pydantic_ai"),
                         ("langchain", "langchain")):  # fmt: skip
        if installed(module):
            figures = out["frameworks"][name]
            # --quick: a few runs, so a figure taken as a difference of two runs (Pydantic
            # AI's: a run of N calls minus a run of none) may be any size on a busy machine;
            # what is checked is that each is a number and the ratio is theirs, as rounded.
            alone, governed = figures["alone_us"], figures["governed_us"]
            assert math.isfinite(alone) and math.isfinite(governed) and alone != 0
            assert figures["ratio"] == pytest.approx(governed / alone, rel=0.01, abs=0.0006)
        else:
            assert "not installed" in out["skipped"][name]
    table = bench("bench/frameworks.py", "--quick", "--only", "pydantic-ai")
    assert table.returncode == 0, table.stderr
    assert "governed" in table.stdout and "target" in table.stdout
