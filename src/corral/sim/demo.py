"""``corral demo``: the browser-outage incident, reproduced in seconds on a virtual clock.

A day of support tickets, each needing a few pages of a vendor portal reached through
a browser tool ($0.70 a call). The vendor is down from 09:12 to 16:20. The same agent
runs the day twice: in an autonomous loop with no budgets, then inside corral under
the reference policy. Both sides are deterministic per seed, and every figure comes
from running them (the governed figures are read back from the store).

>>> figures = simulate(seed=7, runs=5, failure_rate=1.0, db="memory://doctest")
>>> figures["governed"]["tasks_answered"] <= figures["unbounded"]["tasks_answered"] == 5
True
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.sim.sides import (
    BROWSER_SPEC,
    MAX_ATTEMPTS,
    Side,
    governed_policy,
    run_governed,
    run_unbounded,
)
from corral.sim.world import Scenario, Task, clock_time, make_tasks
from corral.stores import default_url, display_url, open_store
from corral.stores.memory import MemoryStore


def new_run_prefix() -> str:
    """``demo-20261124-101500-3f9a1c``: the run ids of one invocation start with it."""
    return f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def simulate(
    *,
    seed: int,
    runs: int,
    failure_rate: float,
    db: str | None,
    run_prefix: str | None = None,
) -> dict[str, Any]:
    """Run both sides and return the figures in their JSON form.

    ``db`` is a store URL for the governed runs; ``None`` means the default store
    (``CORRAL_DB``, then the per-user store), except that an in-memory default
    gives a fresh store of its own (``memory://demo-...``), so repeated calls never
    mix. The governed runs' ids start with ``run_prefix`` (default: a new
    :func:`new_run_prefix`), so one invocation's runs stay apart from earlier ones
    in a shared store; the figures count only this invocation's runs.
    """
    scenario = Scenario()
    url = db if db is not None else default_url()
    if db is None and url.startswith("memory://"):
        url = f"memory://demo-{uuid.uuid4().hex[:12]}"
    store = open_store(url)
    tasks = make_tasks(seed=seed, runs=runs, scenario=scenario)
    unbounded = run_unbounded(tasks, scenario=scenario, failure_rate=failure_rate, seed=seed)
    prefix = run_prefix or new_run_prefix()
    governed = run_governed(
        tasks,
        scenario=scenario,
        failure_rate=failure_rate,
        seed=seed,
        store=store,
        run_prefix=prefix,
        namespace=prefix,  # breakers of this invocation's own: the figures ignore the past
    )
    # The same governed agent without degrade mode, in a throwaway store: what the breaker saved.
    no_breaker = run_governed(
        tasks,
        scenario=scenario,
        failure_rate=failure_rate,
        seed=seed,
        store=MemoryStore(),
        degrade=False,
    )
    budgets = governed_policy().budgets
    return {
        "seed": seed,
        "runs": runs,
        "failure_rate": failure_rate,
        "store": display_url(url),
        "outage": {
            "start": clock_time(scenario.outage_start),
            "end": clock_time(scenario.outage_end),
            "seconds": scenario.outage_end - scenario.outage_start,
        },
        "browser_cost_usd": _money(scenario.browser_cost_usd),
        "budgets": {
            "max_steps": budgets.max_steps,
            "max_seconds": budgets.max_seconds,
            "max_tool_calls": budgets.max_tool_calls,
        },
        "unbounded": {
            **_side(unbounded, tasks, scenario),
            "stop_reasons": None,  # the loop has none: a ticket ends only when answered
            "safety_cap_hit": unbounded.safety_cap_hit,
        },
        "governed": {
            **_side(governed, tasks, scenario),
            "stop_reasons": governed.stop_reasons,
            "runs": governed.attempts,
            "answered_first_try": governed.answered_first_try,
            "tickets_requeued": governed.tickets_requeued,
            "tickets_given_up": governed.tickets_given_up,
        },
        "governed_without_breaker": {
            "browser_calls": no_breaker.browser_calls,
            "browser_calls_in_outage": no_breaker.browser_calls_in_outage,
            "usd": _money(no_breaker.usd),
            "tasks_answered": no_breaker.tasks_answered,
        },
    }


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01")))


def _outage_answered_by(side: Side, tasks: list[Task], scenario: Scenario) -> str | None:
    """When the last ticket that arrived during the outage was answered (``None``: one never
    was)."""
    during = [t.index for t in tasks if scenario.in_outage(t.arrival)]
    if any(i not in side.answered_at for i in during):
        return None
    return clock_time(max((side.answered_at[i] for i in during), default=scenario.outage_end))


def _side(side: Side, tasks: list[Task], scenario: Scenario) -> dict[str, Any]:
    return {
        "outage_tickets_answered_by": _outage_answered_by(side, tasks, scenario),
        "tool_calls": side.tool_calls,
        "browser_calls": side.browser_calls,
        "browser_calls_in_outage": side.browser_calls_in_outage,
        "usd": _money(side.usd),
        "tool_usd": _money(side.tool_usd),
        "model_usd": _money(side.model_usd),
        "simulated_seconds": round(side.simulated_seconds, 1),
        "tasks_answered": side.tasks_answered,
        "max_tool_calls_in_a_run": side.max_tool_calls_in_a_run,
        "max_steps_in_a_run": side.max_steps_in_a_run,
        "longest_run_seconds": round(side.longest_run_seconds, 1),
    }


# -- the table ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``62 s``, ``95 min`` or ``7 h 28 min``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def render(figures: dict[str, Any], console: Console, *, run_prefix: str | None = None) -> None:
    """Print the side-by-side table and what bounded each side (and, for a durable
    store, where the governed runs were recorded: ids starting with ``run_prefix``)."""
    u, g = figures["unbounded"], figures["governed"]
    runs, outage = figures["runs"], figures["outage"]
    table = Table(
        title=f"One simulated day: {runs:,} tickets, "
        f"browser vendor down {outage['start']}-{outage['end']}",
        caption=f"seed {figures['seed']} · failure rate {figures['failure_rate']:g} "
        f"during the outage · browser.open ${figures['browser_cost_usd']:.2f} a call",
    )
    table.add_column("")
    table.add_column("unbounded loop", justify="right", style="red")
    table.add_column("inside corral", justify="right", style="green")

    def count(key: str) -> tuple[str, str]:
        return f"{u[key]:,}", f"{g[key]:,}"

    def money(key: str) -> tuple[str, str]:
        return f"${u[key]:,.2f}", f"${g[key]:,.2f}"

    def time(key: str) -> tuple[str, str]:
        return duration(u[key]), duration(g[key])

    answered = f"{u['tasks_answered']:,} / {runs:,}", f"{g['tasks_answered']:,} / {runs:,}"
    last = tuple(side["outage_tickets_answered_by"] or "never" for side in (u, g))
    reasons = ", ".join(f"{k} {v:,}" for k, v in g["stop_reasons"].items())
    rows = [
        ("tool calls", *count("tool_calls")),
        ("browser calls", *count("browser_calls")),
        ("  during the outage", *count("browser_calls_in_outage")),
        ("spend (USD)", *money("usd")),
        ("  of which browser", *money("tool_usd")),
        ("simulated agent time", *time("simulated_seconds")),
        ("tasks answered", *answered),
        ("  outage tickets done by", *last),
        ("runs", f"{runs:,}", f"{g['runs']:,}"),
        ("longest run", *time("longest_run_seconds")),
        ("most tool calls in a run", *count("max_tool_calls_in_a_run")),
        ("stop reasons", "none", reasons),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in explain(figures):
        console.print(line, highlight=False)
    if not figures["store"].startswith("memory://"):
        which = f" as {run_prefix}-*" if run_prefix else ""
        console.print(
            f"Governed runs recorded in {figures['store']}{which}.", style="dim", highlight=False
        )


def explain(figures: dict[str, Any]) -> list[str]:
    """A few sentences on what bounded each side, from the figures."""
    u, g, b = figures["unbounded"], figures["governed"], figures["budgets"]
    lines = []
    if u["safety_cap_hit"]:
        lines.append(
            "Unbounded: the simulation's own safety cap stopped the loop; nothing in it would have."
        )
    elif u["max_tool_calls_in_a_run"] > b["max_tool_calls"]:
        lines.append(
            "Unbounded: nothing limits the loop, so it retried and re-browsed for as long as "
            f"the vendor kept failing: one ticket took {duration(u['longest_run_seconds'])} "
            f"and {u['max_tool_calls_in_a_run']:,} tool calls."
        )
    else:
        lines.append("Unbounded: no failure lasted long enough for the loop to run away this time.")
    within = (
        g["max_tool_calls_in_a_run"] <= b["max_tool_calls"]
        and g["max_steps_in_a_run"] <= b["max_steps"]
        and g["longest_run_seconds"] <= b["max_seconds"] + 0.1
    )
    lines.append(
        f"Governed: every run {'stayed within' if within else 'went past'} its budgets "
        f"(at most {g['max_tool_calls_in_a_run']} of {b['max_tool_calls']} tool calls, "
        f"{g['max_steps_in_a_run']} of {b['max_steps']} steps, "
        f"{g['longest_run_seconds']:.0f} of {b['max_seconds']:g} s)."
    )
    nb = figures.get("governed_without_breaker")
    degraded = g["stop_reasons"].get("dependency_degraded", 0)
    if nb is not None and degraded:
        saved = nb["browser_calls"] - g["browser_calls"]
        lines.append(
            f"Degrade mode: the browser's breaker opened during the outage, so {degraded:,} runs "
            "stopped with dependency_degraded before calling the vendor: "
            f"{g['browser_calls_in_outage']:,} browser calls during the outage instead of "
            f"{nb['browser_calls_in_outage']:,} without the breaker ({saved:,} calls and "
            f"${nb['usd'] - g['usd']:,.2f} saved over the day)."
        )
    stopped = {k: v for k, v in g["stop_reasons"].items() if k != "ok"}
    if stopped:
        what = ", ".join(f"{k} {v:,}" for k, v in stopped.items())
        lines.append(
            f"{sum(stopped.values()):,} runs stopped early ({what}): the gateway retried a "
            f"failing browser call at most {BROWSER_SPEC['retries']} times within the run's "
            "time (or not at all while the breaker was open), then the run ended with its "
            "stop reason and the next ticket began."
        )
    if g["tickets_requeued"]:
        gave_up = (
            f"; {g['tickets_given_up']:,} given up after {MAX_ATTEMPTS} runs"
            if g["tickets_given_up"]
            else ""
        )
        lines.append(
            f"Re-queued: {g['tickets_requeued']:,} tickets met a retryable stop and were run "
            "again after its retry_after (the breaker's cool-down), as a well-behaved caller "
            f"does: {g['tasks_answered']:,} of {figures['runs']:,} answered in the end "
            f"({g['answered_first_try']:,} at the first run{gave_up}); the tickets that arrived "
            f"during the outage were all answered by {g['outage_tickets_answered_by'] or 'never'}."
        )
    in_outage = g["browser_calls_in_outage"]
    if u["browser_calls_in_outage"] and in_outage < u["browser_calls_in_outage"]:
        share = in_outage / u["browser_calls_in_outage"]
        lines.append(
            f"Calls into the failing vendor during the outage: {in_outage:,} inside corral, "
            f"{u['browser_calls_in_outage']:,} unbounded ({share:.1%})."
        )
    return lines
