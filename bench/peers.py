"""corral and its peers side by side: one process, interleaved rounds, paired medians.

Every case runs in every round (the order rotating from round to round), each for its
own number of iterations; a round yields each case's p50/p99 and the ratios between
cases measured in that round (paired). Printed: the median over rounds of each figure
and of each paired ratio, with its spread (min–max over rounds) and the target of
issue 13 beside it.

Cases:

- corral, the allow path of a read tool through ``Run.call`` on ``memory://`` and on a
  durable SQLite file, each interleaved with bare calls of the same function (overhead =
  governed p50 − bare p50); ``AsyncRun.call`` of an async tool, interleaved with bare
  awaits of it (and of a sync tool, the thread hop, in a pass of its own); a write with a
  durable idempotency claim on SQLite;
- Agent Governance Toolkit (``agent-governance-toolkit[core]``): ``PolicyInterceptor.
  intercept``; check + count + in-memory audit record built from its own parts;
  ``ToolUsingAgent._use_tool`` (allowlist, the kernel's policy check, an audit entry);
- the governed loop, per tool call: ``corral.run`` with ``ScriptedModel`` (memory and
  SQLite), Pydantic AI (``Agent`` + ``FunctionModel``) and the OpenAI Agents SDK
  (``Runner.run`` with a minimal fake ``Model``), each doing runs of 10 tool calls (one
  per turn, then a final answer) interleaved with runs of 0 tool calls; per tool call =
  (p50 of the 10-call run − p50 of the 0-call run) / 10, the fixed cost per run = p50 of
  the 0-call run;
- ``import corral`` and the import of AGT's parts used here, each in a fresh interpreter
  (``python -c``) paired with ``python -c pass``: the import's cost is the difference.

A peer that is not installed is reported as such (``pip install -e '.[bench]'``).

    python bench/peers.py [--rounds 5] [--scale 1.0] [--quick] [--json]

Nothing here asserts a time: ``--quick`` runs every case briefly, for a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import corral
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, final

Samples = dict[str, list[float]]  # side -> microseconds, one per iteration
clock = time.perf_counter_ns
TOOL_CALLS = 10  # tool calls in a loop run
QUERIES = [{"query": f"vendor status {i}"} for i in range(8)]  # loop detection never trips
AGT_IMPORT = (
    "from agent_os.base_agent import ToolUsingAgent; "
    "from agent_os.integrations.base import PolicyInterceptor"
)
PEERS_HINT = "the peers install with: pip install -e '.[bench]'"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def policy_for(*tools: corral.Tool) -> corral.Policy:
    """Every budget out of reach, the read cache off, writes without approval."""
    allow = [t.name for t in tools]
    specs = {t.name: {"cache": False} for t in tools if t.effect == "read"}
    return corral.Policy.from_dict(
        {
            "tools": {"allow": allow, "specs": specs},
            "writes": {"require_approval": False},
            "budgets": {"max_tool_calls": 10**9, "max_steps": 10**9, "max_seconds": 10**6},
        }
    )


@corral.tool(name="kb.read", effect="read")
def kb_read(query: str) -> str:
    return "answer for " + query


@corral.tool(name="kb.aread", effect="read")
async def kb_aread(query: str) -> str:
    return "answer for " + query


@corral.tool(name="kb.read_sync", effect="read")
def kb_read_sync(query: str) -> str:
    return "answer for " + query


@corral.tool(name="ledger.write", effect="write")
def ledger_write(entry: str) -> str:
    return "written " + entry


# ---------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One thing measured: ``measure(n)`` times ``n`` iterations and returns samples."""

    key: str
    label: str
    iterations: int
    setup: Callable[[], Callable[[int], Samples]]
    measure: Callable[[int], Samples] | None = None
    missing: str | None = None  # why the case did not run (a peer not installed)
    in_quick: bool = True  # run with --quick
    rounds: list[Samples] = field(default_factory=list)


def timed_pairs(n: int, bare: Callable[[int], Any], governed: Callable[[int], Any]) -> Samples:
    """``bare(i)`` and ``governed(i)`` interleaved, ``n`` times each."""
    a: list[float] = []
    b: list[float] = []
    for i in range(n):
        t0 = clock()
        bare(i)
        t1 = clock()
        governed(i)
        t2 = clock()
        a.append((t1 - t0) / 1000)
        b.append((t2 - t1) / 1000)
    return {"bare": a, "call": b}


def corral_allow_memory() -> Callable[[int], Samples]:
    run = corral.Run(policy_for(kb_read), tools=[kb_read], store="memory://")
    fn = kb_read.fn

    def measure(n: int) -> Samples:
        return timed_pairs(
            n, lambda i: fn(**QUERIES[i % 8]), lambda i: run.call("kb.read", QUERIES[i % 8])
        )

    return measure


def corral_allow_sqlite() -> Callable[[int], Samples]:
    store = SQLiteStore(scratch("allow.db"))
    run = corral.Run(policy_for(kb_read), tools=[kb_read], store=store)
    fn = kb_read.fn

    def measure(n: int) -> Samples:
        return timed_pairs(
            n, lambda i: fn(**QUERIES[i % 8]), lambda i: run.call("kb.read", QUERIES[i % 8])
        )

    return measure


def in_loop(batch: Callable[[int], Awaitable[Samples]]) -> Callable[[int], Samples]:
    """A measure that runs ``batch(n)`` in one event loop kept for the whole bench."""
    loop = asyncio.new_event_loop()
    LOOPS.append(loop)
    return lambda n: loop.run_until_complete(batch(n))


def corral_async_call() -> Callable[[int], Samples]:
    tools = [kb_aread, kb_read_sync]
    run = corral.AsyncRun(policy_for(*tools), tools=tools, store=MemoryStore())
    fn = kb_aread.fn

    async def batch(n: int) -> Samples:
        # The sync tool's calls are timed in a pass of their own: right after a thread hop
        # the worker thread still holds the interpreter for a moment, and interleaving the
        # two would charge the next async call for it.
        bare: list[float] = []
        async_tool: list[float] = []
        sync_tool: list[float] = []
        for i in range(n):
            args = QUERIES[i % 8]
            t0 = clock()
            await fn(**args)
            t1 = clock()
            await run.call("kb.aread", args)
            t2 = clock()
            bare.append((t1 - t0) / 1000)
            async_tool.append((t2 - t1) / 1000)
        for i in range(n):
            args = QUERIES[i % 8]
            t2 = clock()
            await run.call("kb.read_sync", args)
            sync_tool.append((clock() - t2) / 1000)
        return {"bare": bare, "call": async_tool, "sync_tool": sync_tool}

    return in_loop(batch)


def corral_write_sqlite() -> Callable[[int], Samples]:
    store = SQLiteStore(scratch("write.db"))
    run = corral.Run(policy_for(ledger_write), tools=[ledger_write], store=store)
    fn = ledger_write.fn
    serial = iter(range(10**12))  # a new key every call: a durable claim every time

    def measure(n: int) -> Samples:
        entries = [{"entry": f"entry {next(serial)}"} for _ in range(n)]
        return timed_pairs(
            n, lambda i: fn(**entries[i]), lambda i: run.call("ledger.write", entries[i])
        )

    return measure


@contextlib.contextmanager
def agt_import() -> Iterator[None]:
    """AGT 4.1 warns that its ``agent_os`` import name is deprecated; it is still the one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def agt_parts() -> tuple[Any, Any, list[Any]]:
    with agt_import():
        from agent_os.integrations.base import (
            ExecutionContext,
            GovernancePolicy,
            PolicyInterceptor,
            ToolCallRequest,
        )

    policy = GovernancePolicy(name="bench", allowed_tools=["kb.read"], max_tool_calls=10**9)
    context = ExecutionContext(agent_id="bench-agent", session_id="bench", policy=policy)
    interceptor = PolicyInterceptor(policy, context)
    requests = [ToolCallRequest(tool_name="kb.read", arguments=q) for q in QUERIES]
    if not interceptor.intercept(requests[0]).allowed:
        raise RuntimeError("AGT's PolicyInterceptor refused the bench's call")
    return interceptor, context, requests


def agt_intercept() -> Callable[[int], Samples]:
    interceptor, _context, requests = agt_parts()
    intercept = interceptor.intercept

    def measure(n: int) -> Samples:
        out: list[float] = []
        for i in range(n):
            request = requests[i % 8]
            t0 = clock()
            intercept(request)
            out.append((clock() - t0) / 1000)
        return {"call": out}

    return measure


def agt_composite() -> Callable[[int], Samples]:
    with agt_import():
        from agent_os.base_agent import AuditEntry, PolicyDecision

    interceptor, context, requests = agt_parts()
    intercept = interceptor.intercept
    audit: list[Any] = []

    def governed(request: Any) -> None:
        result = intercept(request)  # check: allowlist, blocked patterns, call count
        context.call_count += 1  # count
        audit.append(  # an in-memory audit record
            AuditEntry(
                timestamp=datetime.now(UTC),
                agent_id=context.agent_id,
                request_id=request.call_id,
                action=request.tool_name,
                params=request.arguments,
                decision=PolicyDecision.ALLOW if result.allowed else PolicyDecision.DENY,
            )
        )

    def measure(n: int) -> Samples:
        audit.clear()
        out: list[float] = []
        for i in range(n):
            request = requests[i % 8]
            t0 = clock()
            governed(request)
            out.append((clock() - t0) / 1000)
        return {"call": out}

    return measure


def agt_use_tool() -> Callable[[int], Samples]:
    with agt_import():
        from agent_os.base_agent import AgentConfig, ToolUsingAgent

    class BenchAgent(ToolUsingAgent):
        async def run(self, *args: Any, **kwargs: Any) -> Any:
            return await self._use_tool("kb.read", QUERIES[0])

    agent = BenchAgent(AgentConfig(agent_id="bench-agent", policies=["read_only"]), ["kb.read"])
    check = asyncio.run(agent.run())
    if not check.success:
        raise RuntimeError(f"AGT's ToolUsingAgent refused the bench's call: {check.error}")
    use_tool = agent._use_tool

    async def batch(n: int) -> Samples:
        # Its audit log is trimmed by copying once past 10,000 entries: cleared before
        # that, untimed, so that the copy (an artefact of a long bench) never lands on a call.
        agent.clear_audit_log()
        out: list[float] = []
        for i in range(n):
            if i % 9000 == 8999:
                agent.clear_audit_log()
            args = QUERIES[i % 8]
            t0 = clock()
            await use_tool("kb.read", args)
            out.append((clock() - t0) / 1000)
        return {"call": out}

    return in_loop(batch)


def loop_samples(n: int, one_run: Callable[[int], Any]) -> Samples:
    """Runs of 10 tool calls and of 0 interleaved, ``n`` of each."""
    ten: list[float] = []
    zero: list[float] = []
    for _ in range(n):
        t0 = clock()
        one_run(TOOL_CALLS)
        t1 = clock()
        one_run(0)
        t2 = clock()
        ten.append((t1 - t0) / 1000)
        zero.append((t2 - t1) / 1000)
    return {"run10": ten, "run0": zero}


def corral_loop(store_factory: Callable[[], Any]) -> Callable[[], Callable[[int], Samples]]:
    def setup() -> Callable[[int], Samples]:
        store = store_factory()
        policy = policy_for(kb_read)
        scripts = {
            k: [*(call("kb.read", **QUERIES[i % 8]) for i in range(k)), final("done")]
            for k in (0, TOOL_CALLS)
        }

        def one_run(k: int) -> None:
            model = ScriptedModel(scripts[k])
            result = corral.run("status?", model=model, tools=[kb_read], policy=policy, store=store)
            if result.status != "ok" or result.usage.tool_calls != k:
                raise RuntimeError(f"corral run ended {result.stop_reason}: {result.error}")

        one_run(TOOL_CALLS)
        return lambda n: loop_samples(n, one_run)

    return setup


def pydantic_ai_loop() -> Callable[[int], Samples]:
    from pydantic_ai import Agent
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart
    from pydantic_ai.models.function import AgentInfo, FunctionModel

    script = {"turn": 0, "calls": 0}

    def model_turn(messages: list[Any], info: AgentInfo) -> ModelResponse:
        i = script["turn"]
        script["turn"] = i + 1
        if i < script["calls"]:
            part = ToolCallPart("kb_read", QUERIES[i % 8], tool_call_id=f"call-{i}")
            return ModelResponse(parts=[part])
        return ModelResponse(parts=[TextPart("done")])

    agent = Agent(FunctionModel(model_turn))

    @agent.tool_plain(name="kb_read")
    def peer_read(query: str) -> str:
        return "answer for " + query

    loop = asyncio.new_event_loop()
    LOOPS.append(loop)

    def one_run(k: int) -> None:
        script["turn"], script["calls"] = 0, k
        result = loop.run_until_complete(agent.run("status?"))
        if result.output != "done" or script["turn"] != k + 1:
            raise RuntimeError(f"Pydantic AI run ended with {result.output!r}")

    one_run(TOOL_CALLS)
    return lambda n: loop_samples(n, one_run)


def openai_agents_loop() -> Callable[[int], Samples]:
    from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    set_tracing_disabled(True)  # nothing leaves the process

    class FakeModel(Model):
        """The least a Model does: answer each turn from a script."""

        def __init__(self) -> None:
            self.turn = 0
            self.calls = 0

        async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
            i = self.turn
            self.turn = i + 1
            out: list[Any]
            if i < self.calls:
                arguments = json.dumps(QUERIES[i % 8])
                out = [
                    ResponseFunctionToolCall(
                        type="function_call",
                        call_id=f"call-{i}",
                        name="kb_read",
                        arguments=arguments,
                    )
                ]
            else:
                text = ResponseOutputText(type="output_text", text="done", annotations=[])
                out = [
                    ResponseOutputMessage(
                        id="msg",
                        type="message",
                        role="assistant",
                        status="completed",
                        content=[text],
                    )
                ]
            return ModelResponse(output=out, usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("the bench does not stream")

    @function_tool(name_override="kb_read")
    def peer_read(query: str) -> str:
        return "answer for " + query

    model = FakeModel()
    agent = Agent(name="bench", model=model, tools=[peer_read])
    config = RunConfig(tracing_disabled=True)
    loop = asyncio.new_event_loop()
    LOOPS.append(loop)

    def one_run(k: int) -> None:
        model.turn, model.calls = 0, k
        coro = Runner.run(agent, "status?", max_turns=TOOL_CALLS + 5, run_config=config)
        result = loop.run_until_complete(coro)
        if result.final_output != "done" or model.turn != k + 1:
            raise RuntimeError(f"OpenAI Agents SDK run ended with {result.final_output!r}")

    one_run(TOOL_CALLS)
    return lambda n: loop_samples(n, one_run)


def imports(statement: str, needs: str | None = None) -> Callable[[], Callable[[int], Samples]]:
    """``python -c STATEMENT`` in a fresh interpreter against ``python -c pass``, paired."""

    def setup() -> Callable[[int], Samples]:
        if needs is not None and importlib.util.find_spec(needs) is None:
            raise ModuleNotFoundError(f"No module named {needs!r}", name=needs)
        quiet = "import warnings; warnings.simplefilter('ignore'); "

        def python(code: str) -> None:
            subprocess.run([sys.executable, "-c", quiet + code], check=True)

        return lambda n: timed_pairs(n, lambda i: python("pass"), lambda i: python(statement))

    return setup


LOOPS: list[asyncio.AbstractEventLoop] = []
SCRATCH: list[Path] = []


def scratch(name: str) -> Path:
    return SCRATCH[0] / name


def cases(scale: float) -> list[Case]:
    def n(base: int) -> int:
        return max(2, int(base * scale))

    def few(base: int) -> int:  # a case of a second or so an iteration
        return max(1, round(base * scale))

    def sqlite_store() -> SQLiteStore:
        return SQLiteStore(scratch(f"loop{len(LOOPS)}-{time.monotonic_ns()}.db"))

    return [
        Case(
            "corral.allow.memory", "corral Run.call, read, memory://", n(4000), corral_allow_memory
        ),
        Case("corral.allow.sqlite", "corral Run.call, read, SQLite", n(1500), corral_allow_sqlite),
        Case("corral.async", "corral AsyncRun.call, async tool", n(3000), corral_async_call),
        Case(
            "corral.write.sqlite",
            "corral write, durable claim, SQLite",
            n(600),
            corral_write_sqlite,
        ),
        Case("agt.intercept", "AGT PolicyInterceptor.intercept", n(4000), agt_intercept),
        Case("agt.composite", "AGT check + count + audit record", n(4000), agt_composite),
        Case("agt.use_tool", "AGT ToolUsingAgent._use_tool", n(4000), agt_use_tool),
        Case("loop.corral.memory", "corral.run loop, memory://", n(100), corral_loop(MemoryStore)),
        Case("loop.corral.sqlite", "corral.run loop, SQLite", n(60), corral_loop(sqlite_store)),
        Case("loop.pydantic_ai", "Pydantic AI Agent loop", n(20), pydantic_ai_loop),
        Case("loop.openai_agents", "OpenAI Agents SDK Runner.run loop", n(20), openai_agents_loop),
        Case(
            "import.corral",
            "import corral (a fresh interpreter)",
            few(2),
            imports("import corral"),
            in_quick=False,
        ),
        Case(
            "import.agt",
            "import AGT's agent and interceptor",
            few(2),
            imports(AGT_IMPORT, "agent_os"),
        ),
    ]


# ---------------------------------------------------------------------------- figures


def round_figures(case: Case, samples: Samples) -> dict[str, float]:
    """One round's figures of one case, in microseconds."""
    if "run10" in samples:
        ten, zero = percentile(samples["run10"], 0.5), percentile(samples["run0"], 0.5)
        return {
            "run10_p50": ten,
            "run0_p50": zero,
            "run10_p99": percentile(samples["run10"], 0.99),
            "per_call": (ten - zero) / TOOL_CALLS,
            "per_call_total": ten / TOOL_CALLS,
        }
    f = {"p50": percentile(samples["call"], 0.5), "p99": percentile(samples["call"], 0.99)}
    if "bare" in samples:
        f["bare_p50"] = percentile(samples["bare"], 0.5)
        f["overhead_p50"] = f["p50"] - f["bare_p50"]
        f["overhead_p99"] = f["p99"] - percentile(samples["bare"], 0.99)
    if "sync_tool" in samples:
        f["sync_tool_p50"] = percentile(samples["sync_tool"], 0.5)
        f["sync_tool_p99"] = percentile(samples["sync_tool"], 0.99)
    return f


@dataclass(frozen=True)
class Ratio:
    key: str
    label: str
    num: tuple[str, str]  # (case, figure)
    den: tuple[str, str]
    target: float | None = None  # the ratio must be <= target
    target_text: str = ""


RATIOS = [
    Ratio(
        "overhead_over_agt_use_tool",
        "corral overhead (memory) / AGT _use_tool, p50",
        ("corral.allow.memory", "overhead_p50"),
        ("agt.use_tool", "p50"),
        1 / 3,
        "<= 0.33",
    ),
    Ratio(
        "overhead_over_agt_composite",
        "corral overhead (memory) / AGT check+count+audit, p50",
        ("corral.allow.memory", "overhead_p50"),
        ("agt.composite", "p50"),
        1.5,
        "<= 1.5",
    ),
    Ratio(
        "overhead_over_agt_intercept",
        "corral overhead (memory) / AGT intercept, p50",
        ("corral.allow.memory", "overhead_p50"),
        ("agt.intercept", "p50"),
    ),
    Ratio(
        "async_over_sync",
        "corral AsyncRun.call / Run.call, p50",
        ("corral.async", "p50"),
        ("corral.allow.memory", "p50"),
        1.3,
        "<= 1.3",
    ),
    Ratio(
        "sync_tool_async_over_sync",
        "corral AsyncRun.call of a sync tool / Run.call, p50",
        ("corral.async", "sync_tool_p50"),
        ("corral.allow.memory", "p50"),
    ),
    Ratio(
        "import_over_agt",
        "import corral / import AGT (over a bare interpreter)",
        ("import.corral", "overhead_p50"),
        ("import.agt", "overhead_p50"),
    ),
    Ratio(
        "sqlite_over_memory",
        "corral Run.call SQLite / memory, p50",
        ("corral.allow.sqlite", "p50"),
        ("corral.allow.memory", "p50"),
    ),
    Ratio(
        "loop_over_pydantic_ai",
        "corral loop per tool call (memory) / Pydantic AI",
        ("loop.corral.memory", "per_call"),
        ("loop.pydantic_ai", "per_call"),
        1 / 40,
        "<= 0.025 (40x)",
    ),
    Ratio(
        "loop_over_openai_agents",
        "corral loop per tool call (memory) / OpenAI Agents SDK",
        ("loop.corral.memory", "per_call"),
        ("loop.openai_agents", "per_call"),
        1 / 40,
        "<= 0.025 (40x)",
    ),
]

# (case, figure, label, target in microseconds): the absolute targets of issue 13, a guide
# on a shared 2-core machine; the ratios above are what a run on any machine can judge.
TARGETS = [
    ("corral.allow.memory", "overhead_p50", "overhead p50", None),
    ("corral.allow.memory", "p99", "p99", 25.0),
    ("corral.allow.sqlite", "p50", "p50", 40.0),
    ("corral.allow.sqlite", "p99", "p99", 1000.0),
    ("corral.write.sqlite", "p50", "p50", 200.0),
    ("corral.write.sqlite", "p99", "p99", 2000.0),
    ("loop.corral.memory", "per_call", "per tool call", 60.0),
    ("loop.corral.memory", "run0_p50", "fixed cost per run", 80.0),
    ("loop.corral.sqlite", "per_call", "per tool call", 150.0),
    ("import.corral", "overhead_p50", "import, over a bare interpreter", 120_000.0),
]


def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": [round(v, 3) for v in values],
    }


def report(all_cases: list[Case], opts: argparse.Namespace) -> dict[str, Any]:
    per_round: list[dict[str, dict[str, float]]] = [
        {c.key: round_figures(c, c.rounds[r]) for c in all_cases if c.missing is None}
        for r in range(opts.rounds)
    ]
    out: dict[str, Any] = {
        "rounds": opts.rounds,
        "quick": opts.quick,
        "tool_calls_per_loop_run": TOOL_CALLS,
        "cases": {},
        "ratios": {},
        "targets": [],
    }
    for c in all_cases:
        entry: dict[str, Any] = {"label": c.label, "iterations": c.iterations}
        if c.missing is not None:
            entry["missing"] = c.missing
        else:
            names = per_round[0][c.key].keys()
            entry["figures"] = {k: summarize([rf[c.key][k] for rf in per_round]) for k in names}
        out["cases"][c.key] = entry
    for ratio in RATIOS:
        missing = [k for k in (ratio.num[0], ratio.den[0]) if "missing" in out["cases"][k]]
        if missing:
            out["ratios"][ratio.key] = {"label": ratio.label, "missing": missing}
            continue
        values = [
            rf[ratio.num[0]][ratio.num[1]] / max(rf[ratio.den[0]][ratio.den[1]], 1e-9)
            for rf in per_round
        ]
        s = summarize(values)
        if ratio.target is not None:
            s["target"] = ratio.target_text
            s["met"] = s["median"] <= ratio.target
        out["ratios"][ratio.key] = {"label": ratio.label, **s}
    for case_key, figure, label, target in TARGETS:
        figures = out["cases"][case_key].get("figures")
        if figures is None:
            continue
        value = figures[figure]["median"]
        row: dict[str, Any] = {"case": case_key, "figure": figure, "label": label, "median": value}
        if target is not None:
            row["target_us"] = target
            row["met"] = value <= target
        out["targets"].append(row)
    return out


def print_tables(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=160)
    quick = " (--quick: too few iterations to read)" if out["quick"] else ""
    figures = Table(
        title=f"corral and peers, one process, medians of {out['rounds']} interleaved rounds{quick}"
        " (µs; range = min–max over rounds)"
    )
    for col in ("case", "p50", "p99", "overhead p50", "p50 range", "per tool call"):
        figures.add_column(col, justify="left" if col == "case" else "right", no_wrap=True)
    for c in out["cases"].values():
        if "missing" in c:
            figures.add_row(c["label"], c["missing"].partition(":")[0], "", "", "", "")
            continue
        f = c["figures"]
        if "per_call" in f:
            figures.add_row(
                f"{c['label']}: 10-call run",
                fmt(f["run10_p50"]),
                fmt(f["run10_p99"]),
                "",
                f"{fmt(f['run10_p50']['min'])}–{fmt(f['run10_p50']['max'])}",
                f"{fmt(f['per_call'])} (0-call run {fmt(f['run0_p50'])})",
            )
            continue
        figures.add_row(
            c["label"],
            fmt(f["p50"]),
            fmt(f["p99"]),
            fmt(f["overhead_p50"]) if "overhead_p50" in f else "",
            f"{fmt(f['p50']['min'])}–{fmt(f['p50']['max'])}",
            "",
        )
        if "sync_tool_p50" in f:
            figures.add_row(
                "corral AsyncRun.call, sync tool (thread hop)",
                fmt(f["sync_tool_p50"]),
                fmt(f["sync_tool_p99"]),
                "",
                f"{fmt(f['sync_tool_p50']['min'])}–{fmt(f['sync_tool_p50']['max'])}",
                "",
            )
    console.print(figures)
    missing = [
        c["missing"]
        for c in out["cases"].values()
        if c.get("missing", "").startswith("not installed:")
    ]
    if missing:
        names = ", ".join(dict.fromkeys(m.removeprefix("not installed: ") for m in missing))
        console.print(escape(f"not installed: {names}; {PEERS_HINT}"))

    ratios = Table(title="paired ratios (computed within each round; median and range over rounds)")
    for col in ("ratio", "median", "range", "target", "met"):
        ratios.add_column(col, justify="left" if col == "ratio" else "right", no_wrap=True)
    for r in out["ratios"].values():
        if "missing" in r:
            ratios.add_row(r["label"], "not run", "", "", "")
            continue
        ratios.add_row(
            r["label"],
            f"{r['median']:.3g}",
            f"{r['min']:.3g}–{r['max']:.3g}",
            r.get("target", ""),
            yes_no(r.get("met")),
        )
    console.print(ratios)

    targets = Table(title="absolute targets (a guide on a shared 2-core machine; µs, medians)")
    for col in ("case", "figure", "median", "target", "met"):
        targets.add_column(col, justify="left" if col in ("case", "figure") else "right")
    for t in out["targets"]:
        target = f"<= {t['target_us']:g}" if "target_us" in t else "see ratios"
        targets.add_row(t["case"], t["label"], f"{t['median']:.1f}", target, yes_no(t.get("met")))
    console.print(targets)


def fmt(figure: Any) -> str:
    value = figure["median"] if isinstance(figure, dict) else figure
    return f"{value:,.1f}" if value < 10_000 else f"{value:,.0f}"


def yes_no(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "no")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every case's iterations per round"
    )
    parser.add_argument("--quick", action="store_true", help="a few iterations of every case")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    opts = parser.parse_args()
    if opts.quick:
        opts.rounds, opts.scale = min(opts.rounds, 2), min(opts.scale, 0.005)
    progress = sys.stderr
    with tempfile.TemporaryDirectory(prefix="corral-peers-") as tmp:
        SCRATCH.append(Path(tmp))
        all_cases = cases(opts.scale)
        for c in all_cases:  # set up, check and warm every case before any timing
            if opts.quick and not c.in_quick:
                c.missing = "not run with --quick"
                continue
            try:
                c.measure = c.setup()
            except ImportError as exc:
                c.missing = f"not installed: {exc.name or exc}"
                continue
            c.measure(max(1, c.iterations // 4))
        runnable = [c for c in all_cases if c.missing is None]
        for r in range(opts.rounds):
            shift = r % len(runnable)  # rotate the order so no case always follows another
            for c in runnable[shift:] + runnable[:shift]:
                assert c.measure is not None
                with gc_paused():
                    c.rounds.append(c.measure(c.iterations))
            print(f"round {r + 1}/{opts.rounds} done", file=progress, flush=True)
        out = report(all_cases, opts)
        for loop in LOOPS:
            loop.close()
    if opts.json:
        print(json.dumps(out, indent=2))
    else:
        print_tables(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
