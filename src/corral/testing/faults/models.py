"""Fault-injecting models: a wrapper that fails turns as endpoints fail, and a gullible
model that obeys orders found in tool output.

See :mod:`corral.testing.faults` for the kit as a whole.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from corral.clock import SystemClock
from corral.models._http import ModelAPIError
from corral.models.base import (
    FREE,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)
from corral.testing.scripted import ScriptedModel, Turn, final

_DIRECTIVE = re.compile(r"\bCALL\s+([A-Za-z0-9_.\-]+)(?:\s+(\{[^{}]*\}))?")


def directive(text: str) -> ToolCallRequest | None:
    """The first ``CALL name {json}`` order in ``text``, as the tool call it asks for.

    >>> directive('ok. CALL browser.open {"query": "x"}')
    ToolCallRequest(name='browser.open', arguments={'query': 'x'}, id='')
    """
    m = _DIRECTIVE.search(text)
    if m is None:
        return None
    args: Mapping[str, Any] | str = {}
    if m.group(2):
        try:
            parsed = json.loads(m.group(2))
        except ValueError:
            args = m.group(2)
        else:
            args = parsed if isinstance(parsed, dict) else m.group(2)
    return ToolCallRequest(name=m.group(1), arguments=args)


class GullibleModel:
    """A scripted model that obeys instructions found in tool output.

    Before each turn it reads the observations since its last turn; when one holds a
    ``CALL name {json}`` order (every :data:`HOSTILE_PAYLOADS` entry does), it calls
    that tool, whatever the policy says. Otherwise it plays its ``script`` (turns as
    for :class:`~corral.testing.ScriptedModel`); when the script runs out it answers
    ``"done"``. :attr:`obeyed` lists what it was talked into.

    >>> from corral.testing import call
    >>> model = GullibleModel([call("web.read", query="vendor status")])
    >>> model.obeyed
    []
    """

    def __init__(
        self,
        script: Sequence[Turn] = (),
        *,
        name: str = "gullible",
        price: Price | None = FREE,
        clock: Any = None,
    ) -> None:
        self._scripted = ScriptedModel(script, name=name, price=price, clock=clock)
        self.name = name
        self.price = price
        self.obeyed: list[ToolCallRequest] = []
        self.requests = self._scripted.requests

    async def respond(self, request: ModelRequest) -> ModelResponse:
        order = None
        for message in reversed(request.messages):
            if message.get("role") != "tool":
                break
            found = directive(str(message.get("content") or ""))
            if found is not None:
                order = found
        scripted = self._scripted
        with scripted._lock:
            if order is not None:
                obeyed = ToolCallRequest(
                    name=order.name, arguments=order.arguments, id=f"obey_{len(self.obeyed) + 1}"
                )
                self.obeyed.append(obeyed)
                scripted.script.insert(scripted._i, Turn(calls=(obeyed,)))
            elif scripted._i >= len(scripted.script):
                scripted.script.append(final("done"))
        return await scripted.respond(request)


ModelFault = Literal[
    "rate_limited",
    "timeout",
    "unparsable",
    "invalid_json",
    "unknown_tool",
    "huge_arguments",
    "empty",
    "truncated",
]
MALFORMED: tuple[ModelFault, ...] = (
    "unparsable",
    "invalid_json",
    "unknown_tool",
    "huge_arguments",
    "empty",
    "truncated",
)


class FaultyModel:
    """Wraps a model and, at the given rates, fails its turns the way endpoints fail.

    - ``rate_limited``: raises :class:`~corral.models.ModelAPIError` with status 429
      and ``retry_after`` (what an adapter raises once its own retries are spent);
    - ``timeouts``: the call takes longer than its timeout (with the real clock it
      sleeps until corral cancels it; on a virtual ``clock`` it advances the clock
      by the request's timeout and raises ``TimeoutError``);
    - ``malformed``: output that cannot be used as is: unparsable, a tool call whose
      arguments are not JSON, a tool no one registered (or a look-alike name),
      arguments of ``huge_chars`` characters, an empty answer, or a truncated one.

    Otherwise the wrapped model answers. :attr:`faults` lists what was injected.

    >>> import corral
    >>> from corral.testing import MemoryStore, ScriptedModel, final
    >>> model = FaultyModel(ScriptedModel([final("done")]), rate_limited=1.0, seed=1)
    >>> result = corral.run("hi", model=model, policy=corral.Policy.from_dict({}),
    ...                     store=MemoryStore())
    >>> result.stop_reason, model.faults
    ('model_error', ['rate_limited'])
    """

    def __init__(
        self,
        inner: Any,
        *,
        seed: int = 0,
        rate_limited: float = 0.0,
        timeouts: float = 0.0,
        malformed: float = 0.0,
        retry_after: float = 2.0,
        huge_chars: int = 200_000,
        clock: Any = None,
    ) -> None:
        total = rate_limited + timeouts + malformed
        if min(rate_limited, timeouts, malformed) < 0 or total > 1:
            raise ValueError(f"fault rates must be >= 0 and add up to at most 1, got {total!r}")
        self.inner = inner
        self.name = str(getattr(inner, "name", type(inner).__name__))
        self.price = getattr(inner, "price", None)
        self.rate_limited = rate_limited
        self.timeouts = timeouts
        self.malformed = malformed
        self.retry_after = retry_after
        self.huge_chars = huge_chars
        self.clock = clock
        self.faults: list[ModelFault] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _draw(self) -> ModelFault | None:
        with self._lock:
            r = self._rng.random()
            kind: ModelFault | None = None
            if r < self.rate_limited:
                kind = "rate_limited"
            elif r < self.rate_limited + self.timeouts:
                kind = "timeout"
            elif r < self.rate_limited + self.timeouts + self.malformed:
                kind = self._rng.choice(MALFORMED)
            if kind is not None:
                self.faults.append(kind)
            return kind

    async def respond(self, request: ModelRequest) -> ModelResponse:
        kind = self._draw()
        if kind is None:
            answer = self.inner.respond(request)
            result: ModelResponse = await answer if inspect.isawaitable(answer) else answer
            return result
        if kind == "rate_limited":
            raise ModelAPIError(
                f"HTTP 429 from {self.name}: rate limited, retry after {self.retry_after:g} s",
                status=429,
                retry_after=self.retry_after,
            )
        if kind == "timeout":
            wait = request.timeout if request.timeout is not None else 60.0
            if self.clock is not None and not isinstance(self.clock, SystemClock):
                self.clock.sleep(wait)
                raise TimeoutError(f"{self.name} gave no answer within {wait:.3g} s")
            await asyncio.sleep(wait + 1.0)  # corral cancels it at its deadline
            raise TimeoutError(f"{self.name} gave no answer within {wait:.3g} s")
        if kind == "unparsable":
            raise ModelOutputError("the model's output is not valid JSON: '{\"tool_calls\": [{'")
        calls: tuple[ToolCallRequest, ...] = ()
        text: str | None = None
        finish = "stop"
        if kind == "invalid_json":
            calls = (
                ToolCallRequest(name=_first_tool(request), arguments='{"query": "x",', id="bad"),
            )
        elif kind == "unknown_tool":
            name = _first_tool(request)
            calls = (ToolCallRequest(name=name.upper() + "_v2", arguments={}, id="unknown"),)
        elif kind == "huge_arguments":
            calls = (
                ToolCallRequest(
                    name=_first_tool(request), arguments={"query": "A" * self.huge_chars}, id="huge"
                ),
            )
        elif kind == "truncated":
            text, finish = "the answer is", "length"
        return ModelResponse(
            text=text,
            tool_calls=calls,
            input_tokens=max(1, len(json.dumps(list(request.messages), default=str)) // 4),
            output_tokens=min(request.max_tokens, max(1, self.huge_chars // 4 if calls else 4)),
            model=self.name,
            finish_reason=finish,
        )


def _first_tool(request: ModelRequest) -> str:
    for spec in request.tools:
        name = spec.get("name")
        if isinstance(name, str):
            return name
    return "search.read"
