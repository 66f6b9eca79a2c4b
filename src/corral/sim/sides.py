"""The two ways of running the same agent on the same day of tickets.

- :func:`run_unbounded`: an autonomous loop with no budgets, no allowlist and no
  stop reasons. A failed call goes back to the model as an error, and the model
  re-browses. A ticket ends only when it is answered.
- :func:`run_governed`: the same model and tools inside :func:`corral.run`, under
  the reference policy plus a spec for the browser. Its figures are read back from
  the store's run records.

Both process tickets one at a time, in order of arrival, each on its own virtual clock.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml

from corral.clock import ManualClock
from corral.loop.bounded import run as corral_run
from corral.policy.schema import Policy
from corral.sim.agent import BROWSER, SimModel, make_tools
from corral.sim.world import VENDOR_HOST, KnowledgeBase, Scenario, Task, Vendor
from corral.stops import StopInfo
from corral.stores.base import Store
from corral.tools import ToolContext

#: The reference configuration (DESIGN.md), unchanged, then the browser added to it.
REFERENCE_YAML = """\
tools:
  allow: ["search.read", "kb.read", "http.get"]
budgets:
  max_steps: 30
  max_seconds: 90
  max_tool_calls: 15
writes:
  require_approval: true
monitoring:
  track: ["tool_calls_per_run", "tokens_per_request", "stop_reason", "latency_p95"]
kill_switch:
  mode_when_enabled: "disable_writes"
"""

BROWSER_SPEC: dict[str, Any] = {
    "effect": "read",
    "cost_usd": 0.70,
    "expensive": True,
    "timeout_seconds": 20,
    "retries": 2,
    "constraints": {"url": {"schemes": ["https"], "hosts": ["*.vendor.example"]}},
}

#: Degrade mode, on the demo's time scale: a failing vendor call hangs ~20 s, so the window
#: spans a few minutes; while the breaker is open a run needing the browser stops at once
#: (``dependency_degraded``) instead of paying for calls that will fail.
DEGRADE: dict[str, Any] = {
    "failure_rate": 0.5,
    "min_calls": 5,
    "window_seconds": 300,
    "cool_down_seconds": 900,
    "on_degraded": "stop",
}

#: How much of the conversation the autonomous agent keeps in its prompt (besides the goal).
MEMORY_MESSAGES = 20
#: The autonomous agent's HTTP client gives up after this long.
CLIENT_TIMEOUT = 30.0
#: A backstop for the simulation itself, far above the incident (it is reported if hit).
SAFETY_CAP_TOOL_CALLS = 100_000
SAFETY_CAP_SECONDS = 30 * 24 * 3600.0

AUTONOMOUS_PROMPT = (
    "You are an autonomous agent. Pursue the goal until it is done. Use any tool you need; "
    "if a tool fails, try again."
)

TENANT = "demo"
AGENT = "browser-agent"

#: The governed side re-queues a ticket whose run stopped with a retryable stop, as a
#: well-behaved production caller does: after the stop's ``retry_after`` (else an
#: exponential backoff from :data:`REQUEUE_BACKOFF`), at most :data:`MAX_ATTEMPTS` runs
#: per ticket in all.
MAX_ATTEMPTS = 40
REQUEUE_BACKOFF = 60.0
REQUEUE_BACKOFF_MAX = 1800.0


def governed_policy(*, degrade: bool = True, dependency: str | None = None) -> Policy:
    """The reference policy with ``browser.open`` allowed and specified, and degrade mode.

    ``dependency`` names the browser's breaker (default: the tool's name): one demo's
    breaker is its own, so breaker state left in a shared store by earlier demos (or by
    real agents with a tool of the same name) never changes this one's figures.
    """
    data = yaml.safe_load(REFERENCE_YAML)
    data["tools"]["allow"].append(BROWSER)
    spec = dict(BROWSER_SPEC)
    if dependency is not None:
        spec["dependency"] = dependency
    data["tools"]["specs"] = {BROWSER: spec}
    if degrade:
        data["degrade"] = DEGRADE
    return Policy.from_dict(data, source="corral demo")


@dataclass(kw_only=True)
class Side:
    """The figures of one side of the demo."""

    tool_calls: int = 0
    browser_calls: int = 0
    browser_calls_in_outage: int = 0
    tool_usd: Decimal = Decimal(0)
    model_usd: Decimal = Decimal(0)
    usd: Decimal = Decimal(0)
    simulated_seconds: float = 0.0
    tasks_answered: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict)
    max_tool_calls_in_a_run: int = 0
    max_steps_in_a_run: int = 0
    longest_run_seconds: float = 0.0
    #: Browser calls as the vendor counted them (every one is billed).
    vendor_calls: int = 0
    safety_cap_hit: bool = False
    #: Runs in all (a re-queued ticket runs again), and how the tickets ended.
    attempts: int = 0
    tickets_requeued: int = 0
    answered_first_try: int = 0
    tickets_given_up: int = 0
    #: When each ticket was answered (simulated seconds since midnight), by ticket index.
    answered_at: dict[int, float] = field(default_factory=dict)


def _start(clock: ManualClock, task: Task) -> float:
    now = clock.monotonic()
    if now < task.arrival:
        clock.advance(task.arrival - now)
    return clock.monotonic()


def run_unbounded(
    tasks: Sequence[Task], *, scenario: Scenario, failure_rate: float, seed: int
) -> Side:
    """Run every ticket in a plain loop with no limit of any kind (but the simulation's cap)."""
    clock = ManualClock(start=0.0)
    vendor = Vendor(scenario, failure_rate=failure_rate, seed=f"{seed}/unbounded")
    kb = KnowledgeBase(scenario, seed=f"{seed}/unbounded")
    model = SimModel(clock, scenario=scenario, seed=f"{seed}/unbounded")
    tools = {t.name: t for t in make_tools(vendor, kb)}
    specs = [t.spec() for t in tools.values()]
    side = Side()
    model_usd = Decimal(0)
    for task in tasks:
        if side.safety_cap_hit:
            break
        started = _start(clock, task)
        for part in (vendor, kb, model):
            part.begin(str(task.index))
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": AUTONOMOUS_PROMPT},
            {"role": "user", "content": task.text},
        ]
        calls = steps = 0
        while True:
            if (
                vendor.calls + kb.calls >= SAFETY_CAP_TOOL_CALLS
                or clock.monotonic() >= SAFETY_CAP_SECONDS
            ):
                side.safety_cap_hit = True
                break
            window = messages[:2] + messages[max(2, len(messages) - MEMORY_MESSAGES) :]
            response = model.think(window, specs)
            steps += 1
            model_usd += model.price.cost(response.input_tokens, response.output_tokens)
            if not response.tool_calls:
                side.tasks_answered += 1
                break
            call = response.tool_calls[0]
            args = call.arguments if isinstance(call.arguments, Mapping) else {}
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"id": call.id, "name": call.name, "arguments": dict(args)}],
                }
            )
            calls += 1
            # The same tool functions, called directly: no allowlist, no validation, no budget.
            ctx = ToolContext(
                tool=call.name,
                run_id=f"autonomous-{task.index}",
                deadline=clock.monotonic() + CLIENT_TIMEOUT,
                clock=clock,
            )
            try:
                observation = tools[call.name](**args, ctx=ctx)
            except Exception as exc:
                observation = f"ERROR: {call.name} failed: {exc}"
            messages.append(
                {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": observation}
            )
        seconds = clock.monotonic() - started
        side.attempts += 1
        side.answered_first_try = side.tasks_answered
        if not side.safety_cap_hit:
            side.answered_at[task.index] = clock.monotonic()
        side.simulated_seconds += seconds
        side.max_tool_calls_in_a_run = max(side.max_tool_calls_in_a_run, calls)
        side.max_steps_in_a_run = max(side.max_steps_in_a_run, steps)
        side.longest_run_seconds = max(side.longest_run_seconds, seconds)
    side.tool_calls = vendor.calls + kb.calls
    side.browser_calls = side.vendor_calls = vendor.calls
    side.browser_calls_in_outage = vendor.calls_in_outage
    side.tool_usd = scenario.browser_cost_usd * vendor.calls
    side.model_usd = model_usd
    side.usd = side.tool_usd + model_usd
    return side


def run_governed(
    tasks: Sequence[Task],
    *,
    scenario: Scenario,
    failure_rate: float,
    seed: int,
    store: Store,
    run_prefix: str | None = None,
    degrade: bool = True,
    requeue: bool = True,
    namespace: str | None = None,
    policy: Policy | None = None,
) -> Side:
    """Run every ticket through :func:`corral.run`, one run at a time in order of readiness;
    the figures come from the store's records of these runs (ids
    ``{run_prefix}-{ticket}`` when a prefix is given, ``-r{n}`` for the n-th re-run).

    With ``requeue`` a ticket whose run stopped with a retryable stop (``tool_error``,
    ``dependency_degraded``, ...) is queued again for after the stop's ``retry_after``
    (else a backoff doubling from :data:`REQUEUE_BACKOFF`), up to :data:`MAX_ATTEMPTS`
    runs; a stop that retrying cannot help ends the ticket unanswered.

    ``namespace`` prefixes the breakers' names (the vendor's and the model endpoint's), so
    that state left in ``store`` by earlier runs of the simulation is not this one's.
    ``policy`` replaces the reference policy (:func:`governed_policy`; ``degrade`` and
    ``namespace`` then change nothing of it). Each run meets the world afresh (its draws are
    its ticket's and attempt's own), so the same day can be run again under another policy.
    """
    clock = ManualClock(start=0.0)
    vendor = Vendor(scenario, failure_rate=failure_rate, seed=f"{seed}/governed")
    kb = KnowledgeBase(scenario, seed=f"{seed}/governed")
    model = SimModel(clock, scenario=scenario, seed=f"{seed}/governed")
    tools = make_tools(vendor, kb)
    dependency = None
    if namespace is not None:
        dependency = f"{namespace}/{VENDOR_HOST}"
        model.dependency = f"{namespace}/model:{model.name}"
    if policy is None:
        policy = governed_policy(degrade=degrade, dependency=dependency)
    max_seconds = float(policy.budgets.max_seconds)
    # (ready at, arrival order, attempt, ticket): the earliest ready ticket runs next.
    queue = [(task.arrival, task.index, 1, task) for task in tasks]
    heapq.heapify(queue)
    tickets = _Tickets()
    while queue:
        ready, _, attempt, task = heapq.heappop(queue)
        now = clock.monotonic()
        if now < ready:
            clock.advance(ready - now)
        for part in (vendor, kb, model):
            part.begin(f"{task.index}/{attempt}")
        result = corral_run(
            task.text,
            model=model,
            tools=tools,
            policy=policy,
            store=store,
            clock=clock,
            tenant=TENANT,
            agent=AGENT,
            run_id=_run_id(run_prefix, task.index, attempt),
            on_run=lambda r: model.bind(r, max_seconds),
        )
        tickets.run_ids.append(result.run_id)
        if result.ok:
            tickets.answered_at[task.index] = clock.monotonic()
            continue
        wait = _requeue_wait(result.stop, attempt) if requeue else None
        if wait is None:
            tickets.given_up += 1
            continue
        tickets.requeued.add(task.index)
        heapq.heappush(queue, (clock.monotonic() + wait, task.index, attempt + 1, task))
    return tickets.onto(_side_from_records(store, tickets.run_ids, vendor, scenario))


def _run_id(prefix: str | None, ticket: int, attempt: int) -> str | None:
    """A governed run's id: ``{prefix}-{ticket}``, ``-r{n}`` added for the n-th re-run;
    None (a generated id) without a prefix."""
    if not prefix:
        return None
    return f"{prefix}-{ticket:04d}" + (f"-r{attempt - 1}" if attempt > 1 else "")


def _requeue_wait(stop: StopInfo | None, attempt: int) -> float | None:
    """How long a ticket whose ``attempt``-th run stopped with ``stop`` waits before it runs
    again (the stop's ``retry_after``, else a doubling backoff; a second at least), or None
    when retrying cannot help or it has had :data:`MAX_ATTEMPTS` runs."""
    if stop is None or not stop.retryable or attempt >= MAX_ATTEMPTS:
        return None
    wait = stop.retry_after
    if wait is None:
        wait = min(REQUEUE_BACKOFF * 2 ** (attempt - 1), REQUEUE_BACKOFF_MAX)
    return max(wait, 1.0)


@dataclass(kw_only=True)
class _Tickets:
    """What became of the governed side's tickets: every run in order, when each ticket
    was answered, which were queued again, how many were given up."""

    run_ids: list[str] = field(default_factory=list)
    answered_at: dict[int, float] = field(default_factory=dict)
    requeued: set[int] = field(default_factory=set)
    given_up: int = 0

    def onto(self, side: Side) -> Side:
        """``side`` with the tickets' figures set on it."""
        side.tasks_answered = len(self.answered_at)
        side.answered_first_try = len(self.answered_at.keys() - self.requeued)
        side.tickets_requeued = len(self.requeued)
        side.tickets_given_up = self.given_up
        side.answered_at = self.answered_at
        return side


def _side_from_records(
    store: Store, run_ids: Sequence[str], vendor: Vendor, scenario: Scenario
) -> Side:
    """The governed side's figures, read back from the store's records of ``run_ids``."""
    side = Side(vendor_calls=vendor.calls, browser_calls_in_outage=vendor.calls_in_outage)
    reasons: Counter[str] = Counter()
    for run_id in run_ids:
        record = store.get_run(run_id)
        if record is None:  # pragma: no cover - a store that lost a run is a bug worth seeing
            raise RuntimeError(f"the store has no record of run {run_id}")
        usage = record.usage
        calls = int(usage.get("tool_calls", 0))
        seconds = float(usage.get("active_seconds", 0.0)) + float(usage.get("waiting_seconds", 0.0))
        by_tool = usage.get("tool_calls_by_tool", {})
        side.tool_calls += calls
        side.browser_calls += int(by_tool.get(BROWSER, 0))
        side.usd += Decimal(str(usage.get("usd", "0")))
        side.simulated_seconds += seconds
        reasons[record.stop_reason or "unknown"] += 1
        side.max_tool_calls_in_a_run = max(side.max_tool_calls_in_a_run, calls)
        side.max_steps_in_a_run = max(side.max_steps_in_a_run, int(usage.get("steps", 0)))
        side.longest_run_seconds = max(side.longest_run_seconds, seconds)
    side.attempts = len(run_ids)
    side.stop_reasons = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    # Every browser attempt is billed (failed ones too); the knowledge base is free.
    side.tool_usd = scenario.browser_cost_usd * side.browser_calls
    side.model_usd = side.usd - side.tool_usd
    return side
