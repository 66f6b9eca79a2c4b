"""Running a suite: every task ``repeat`` times through :func:`corral.arun`, ``jobs`` at a
time, each run with fresh fixture tools, a fresh model from the spec and (unless a store is
given) an in-memory store of its own, so runs share nothing; then each run's expectations.
A write the policy sends for approval is approved or denied at once, as the task says.

>>> import asyncio, tempfile, os
>>> from corral.golden.load import load_suite
>>> from corral.golden.models import parse_spec
>>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
>>> _ = f.write('''
... suite: tiny
... tools: {kb.search: {responses: [{returns: "14 days"}]}}
... tasks:
...   - id: refund
...     task: How long do refunds take?
...     script: [{call: kb.search, args: {q: refund}}, {answer: "14 days"}]
...     expect: {stop_reason: ok, called: [kb.search], answer: {contains: ["14"]}}
... ''')
>>> f.close()
>>> result = asyncio.run(run_suite(load_suite(f.name), parse_spec("scripted")))
>>> [(t.id, t.runs[0].stop_reason, t.runs[0].tool_calls, t.failures) for t in result.tasks]
[('refund', 'ok', 1, [])]
>>> os.unlink(f.name)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from corral.golden.expect import Failure, check
from corral.golden.figures import Figures
from corral.golden.fixtures import fixture_tools
from corral.golden.load import LoadedSuite
from corral.golden.models import ModelSpec
from corral.golden.suite import Task
from corral.loop.bounded import arun
from corral.stores import Store
from corral.stores.memory import MemoryStore


@dataclass(frozen=True, kw_only=True)
class TaskResult:
    """A task's runs (in order) and the expectations they failed."""

    id: str
    runs: list[Figures]
    failures: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ok": not self.failures,
            "runs": [r.to_dict() for r in self.runs],
            "failures": [f.to_dict() for f in self.failures],
        }


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    suite: str
    model: str
    repeat: int
    tasks: list[TaskResult]

    @property
    def failures(self) -> list[Failure]:
        return [f for t in self.tasks for f in t.failures]


async def run_suite(
    loaded: LoadedSuite,
    spec: ModelSpec,
    *,
    repeat: int = 1,
    jobs: int = 4,
    store: Store | None = None,
    on_done: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Run every task of ``loaded`` ``repeat`` times, at most ``jobs`` runs at once;
    ``on_done(task_id)`` is called as each run ends (a progress bar's tick)."""
    if repeat < 1 or jobs < 1:
        raise ValueError("repeat and jobs must be at least 1")
    gate = asyncio.Semaphore(jobs)

    async def one(task: Task) -> Figures:
        async with gate:
            figures = await _run_task(loaded, spec, task, store)
        if on_done is not None:
            on_done(task.id)
        return figures

    tasks = loaded.suite.tasks
    done = await asyncio.gather(*(one(t) for t in tasks for _ in range(repeat)))
    results: list[TaskResult] = []
    for i, task in enumerate(tasks):
        runs = list(done[i * repeat : (i + 1) * repeat])
        failures = [
            replace(f, task=task.id, run=n)
            for n, run in enumerate(runs, 1)
            for f in check(task.expect, run)
        ]
        results.append(TaskResult(id=task.id, runs=runs, failures=failures))
    return SuiteResult(suite=loaded.suite.suite, model=spec.label, repeat=repeat, tasks=results)


def _approver(task: Task) -> Callable[[object], bool]:
    """The in-process approver of a write the policy sends for approval: the task's
    ``approvals`` decides at once (a golden run never waits for a person)."""
    decision = task.approvals == "approve"
    return lambda request: decision


async def _run_task(
    loaded: LoadedSuite, spec: ModelSpec, task: Task, store: Store | None
) -> Figures:
    suite = loaded.suite
    result = await arun(
        task.task,
        model=spec.build(suite, task),
        tools=fixture_tools(suite.task_tools(task)),
        policy=loaded.policies[task.id],
        store=store if store is not None else MemoryStore(),
        agent=f"golden:{suite.suite}",
        instructions=task.instructions,
        approver=_approver(task),
    )
    return Figures.of(result)
