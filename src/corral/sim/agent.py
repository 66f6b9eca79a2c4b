"""The simulated agent: one decision function (its brain), a model object that wraps it
in corral's model protocol, and the tools it uses.

The brain decides from the messages it receives, as a model does: it looks up the
ticket in the knowledge base (once, or ``kb_lookups`` times with a new query each),
then opens the ticket's vendor pages in order,
counting the pages read since the last failure. After a failure it starts the pages
over (re-browsing, as autonomous agents do); once every page is read it answers.

>>> task = "Ticket 1: ... then answer: https://a.vendor.example/1 https://a.vendor.example/2"
>>> msgs = [{"role": "system", "content": "..."}, {"role": "user", "content": task}]
>>> decide(msgs)
Decision(tool='kb.read', arguments={'query': 'Ticket 1'}, answer=None)
>>> msgs.append({"role": "tool", "name": "kb.read", "content": "no notes"})
>>> decide(msgs).arguments
{'url': 'https://a.vendor.example/1'}
"""

from __future__ import annotations

import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from corral.models.base import ModelRequest, ModelResponse, Price, ToolCallRequest
from corral.sim.world import KnowledgeBase, Scenario, Vendor
from corral.tools import Tool, ToolContext, tool

BROWSER = "browser.open"
KB = "kb.read"

#: What the simulated model costs (USD per million tokens), in the range of hosted models.
MODEL_PRICE = Price(input_usd_per_mtok=Decimal("2.50"), output_usd_per_mtok=Decimal("10.00"))
MODEL_NAME = "sim-agent-model"

_URL = re.compile(r"https://\S+")
_TICKET = re.compile(r"Ticket \d+")


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """Call ``tool`` with ``arguments``, or (``tool`` is ``None``) answer with ``answer``."""

    tool: str | None = None
    arguments: Mapping[str, Any] | None = None
    answer: str | None = None


def _task(messages: Sequence[Mapping[str, Any]]) -> str:
    return next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")


def decide(messages: Sequence[Mapping[str, Any]], *, kb_lookups: int = 1) -> Decision:
    """The agent's next move, from the conversation so far: ``kb_lookups`` knowledge-base
    lookups (each query new, so none is a repeat), then the vendor pages."""
    task = _task(messages)
    urls = _URL.findall(task)
    tools = [m.get("name") for m in messages if m.get("role") == "tool"]
    if not tools or (BROWSER not in tools and len(tools) < kb_lookups):
        ticket = _TICKET.search(task)
        query = ticket.group(0) if ticket else task[:40]
        if tools:  # a lookup again: a new query, or loop detection would rightly stop it
            query = f"{query} ({len(tools) + 1})"
        return Decision(tool=KB, arguments={"query": query})
    read = 0
    for m in reversed(messages):
        if m.get("role") != "tool":
            continue
        if m.get("name") != BROWSER or str(m.get("content") or "").startswith("ERROR"):
            break
        read += 1
    if read >= len(urls):
        return Decision(answer=f"{task.split(':', 1)[0]}: answered from {len(urls)} vendor pages.")
    return Decision(tool=BROWSER, arguments={"url": urls[read]})


def estimate_tokens(text: str) -> int:
    """About four characters a token, as common tokenizers average on English and markup."""
    return max(1, len(text) // 4)


class SimModel:
    """The brain as a model corral can drive (``name``, ``price``, ``async respond``).

    Each turn takes 0.8-2 s of the clock and reports tokens estimated from the
    request. Nothing can cancel a turn on a virtual clock, so when the model is
    bound to a governed run it stops itself where corral's timeout would cancel a
    real model: at the run's ``max_seconds``.
    """

    def __init__(self, clock: Any, *, scenario: Scenario, seed: str) -> None:
        self.name = MODEL_NAME
        self.price = MODEL_PRICE
        self.clock = clock
        self.scenario = scenario
        self._seed = seed
        self._rng = random.Random(f"corral-demo/{seed}/model")
        self._ids = itertools.count(1)
        self._run: Any = None
        self._max_seconds: float | None = None
        #: The breaker this model's calls count against (``None``: ``model:<name>``).
        self.dependency: str | None = None

    def begin(self, key: str) -> None:
        """Start the draws and call ids of one run (as :meth:`Vendor.begin`)."""
        self._rng = random.Random(f"corral-demo/{self._seed}/model/{key}")
        self._ids = itertools.count(1)

    def bind(self, run: Any, max_seconds: float) -> None:
        """Follow ``run`` (a :class:`corral.AsyncRun`) so a turn never outlasts its time."""
        self._run = run
        self._max_seconds = max_seconds

    def think(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        *,
        remaining: float | None = None,
    ) -> ModelResponse:
        """One turn: take the latency, decide, report the usage.

        Raises :class:`TimeoutError` (after ``remaining`` seconds) when the turn
        would take longer than ``remaining``.
        """
        latency = self._rng.uniform(*self.scenario.model_latency)
        if remaining is not None and latency > remaining:
            self.clock.sleep(max(0.0, remaining))
            raise TimeoutError(f"{self.name} gave no answer within {max(0.0, remaining):.1f} s")
        self.clock.sleep(latency)
        decision = decide(messages, kb_lookups=self.scenario.kb_lookups)
        prompt = json.dumps([list(messages), list(tools)], default=str)
        if decision.tool is None:
            out = decision.answer or ""
            calls: tuple[ToolCallRequest, ...] = ()
        else:
            arguments = dict(decision.arguments or {})
            out = json.dumps(arguments)
            calls = (
                ToolCallRequest(
                    name=decision.tool, arguments=arguments, id=f"call_{next(self._ids)}"
                ),
            )
        return ModelResponse(
            text=decision.answer,
            tool_calls=calls,
            input_tokens=estimate_tokens(prompt),
            # A short plan precedes each action.
            output_tokens=estimate_tokens(out) + 40,
            model=self.name,
        )

    async def respond(self, request: ModelRequest) -> ModelResponse:
        remaining = None
        if self._run is not None and self._max_seconds is not None:
            remaining = self._max_seconds - float(self._run.usage.active_seconds)
        return self.think(request.messages, request.tools, remaining=remaining)


def make_tools(vendor: Vendor, kb: KnowledgeBase) -> list[Tool]:
    """The agent's tools as corral tools, bound to this world's vendor and knowledge base."""

    def browser_open(url: str, ctx: ToolContext) -> str:
        """Open a web page and return its content."""
        return vendor.open(url, clock=ctx.clock, deadline=ctx.deadline)

    def kb_read(query: str, ctx: ToolContext) -> str:
        """Search the internal notes on tickets."""
        return kb.read(query, clock=ctx.clock)

    def search_read(query: str, ctx: ToolContext) -> str:
        """Search the public web."""
        return kb.search(query, clock=ctx.clock)

    def http_get(url: str, ctx: ToolContext) -> str:
        """Fetch a URL over plain HTTP (no browser, no scripts)."""
        return kb.fetch(url, clock=ctx.clock)

    cost = vendor.scenario.browser_cost_usd
    return [
        tool(browser_open, name=BROWSER, effect="read", cost_usd=cost, expensive=True),
        tool(kb_read, name=KB, effect="read"),
        # The rest of the reference allowlist: on offer, though tickets never need them.
        tool(search_read, name="search.read", effect="read"),
        tool(http_get, name="http.get", effect="read"),
    ]
