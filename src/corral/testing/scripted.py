"""The scripted model and the turns it plays: :func:`call`, :func:`final` and the rest.

Imports the model protocol (:mod:`corral.models.base`) and nothing else of corral.

>>> from corral.testing import ScriptedModel, call, final
>>> model = ScriptedModel([call("search.read", query="x"), final("done")])
>>> len(model.script)
2
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from corral.models.base import (
    FREE,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)

_ids = itertools.count(1)
#: ``json.dumps(value, default=str)``, without building an encoder for every call.
_dumps = json.JSONEncoder(default=str).encode


def new_call_id() -> str:
    """A fresh tool-call id (``call_1``, ``call_2``, ...), unique in this process."""
    return f"call_{next(_ids)}"


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One scripted model turn."""

    text: str | None = None
    calls: tuple[ToolCallRequest, ...] = ()
    raises: BaseException | None = None
    finish_reason: str = "stop"
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def call(
    name: str,
    /,
    _input_tokens: int | None = None,
    _output_tokens: int | None = None,
    **arguments: Any,
) -> Turn:
    """A turn that calls one tool with keyword arguments."""
    return Turn(
        calls=(ToolCallRequest(name=name, arguments=arguments, id=new_call_id()),),
        input_tokens=_input_tokens,
        output_tokens=_output_tokens,
    )


def raw_call(name: str, arguments: str) -> Turn:
    """A turn that calls a tool with raw argument text (possibly not JSON)."""
    return Turn(calls=(ToolCallRequest(name=name, arguments=arguments, id=new_call_id()),))


def turn(*turns: Turn, text: str | None = None) -> Turn:
    """One turn carrying several tool calls (each from :func:`call`)."""
    calls = tuple(c for t in turns for c in t.calls)
    return Turn(text=text, calls=calls)


def final(text: str, *, input_tokens: int | None = None, output_tokens: int | None = None) -> Turn:
    """A turn that answers with ``text`` and calls no tool."""
    return Turn(text=text, input_tokens=input_tokens, output_tokens=output_tokens)


def malformed(reason: str = "unparsable model output") -> Turn:
    """A turn whose output cannot be understood (``invalid_model_output``)."""
    return Turn(raises=ModelOutputError(reason))


def truncated(text: str = "partial answer") -> Turn:
    """A turn cut at ``max_tokens`` (``invalid_model_output``)."""
    return Turn(text=text, finish_reason="length")


def error(exc: BaseException | None = None) -> Turn:
    """A turn where the model endpoint fails (``model_error``)."""
    return Turn(raises=exc or ConnectionError("model endpoint unavailable"))


def slow(step: Turn, seconds: float) -> Turn:
    """``step``, taking ``seconds`` (on the model's clock if it has one, else real time)."""
    return replace(step, latency=seconds)


class ScriptedModel:
    """A model that plays a script of turns, recording every request it receives.

    Free unless given a ``price``. Usage, when a turn does not give it, is estimated
    from the request and the output (never above the reserved bound). With
    ``repeat_last=True`` the last turn repeats forever (for runaway-loop tests);
    otherwise running out of script is ``invalid_model_output``.
    """

    def __init__(
        self,
        script: Sequence[Turn],
        *,
        name: str = "scripted",
        price: Price | None = FREE,
        repeat_last: bool = False,
        clock: Any = None,
    ) -> None:
        self.script = list(script)
        self.name = name
        self.price = price
        self.repeat_last = repeat_last
        self.clock = clock
        self.requests: list[ModelRequest] = []
        self._i = 0
        self._lock = threading.Lock()
        self._sizes: dict[int, tuple[Any, int]] = {}  # see _estimate

    def _next(self) -> Turn:
        with self._lock:
            if self._i < len(self.script):
                step = self.script[self._i]
                self._i += 1
                return step
            if self.repeat_last and self.script:
                last = self.script[-1]
                calls = tuple(
                    ToolCallRequest(name=c.name, arguments=c.arguments, id=new_call_id())
                    for c in last.calls
                )
                return replace(last, calls=calls)
        raise ModelOutputError("the scripted model has no more turns")

    async def respond(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        return await play(
            self._next(), request, name=self.name, clock=self.clock, sizes=self._sizes
        )

    @property
    def turns_played(self) -> int:
        return self._i


def _estimate(request: ModelRequest, sizes: dict[int, tuple[Any, int]] | None) -> int:
    """The characters of the request's JSON (``json.dumps([messages, tools])``).

    With ``sizes`` (a model's own), each message is measured once, the first time it is
    sent, and kept (with the message, so that its id stays its own): a conversation that
    grows is not encoded again every turn. A message changed in place after it was sent
    keeps its first size (messages are not changed once sent; the loop's never are). The
    tools are measured again only when they differ from the last turn's.
    """
    tools = list(request.tools)
    if sizes is None:
        return len(_dumps([list(request.messages), tools]))
    messages = list(request.messages)
    total = 0
    for message in messages:
        known = sizes.get(id(message))
        if known is None or known[0] is not message:
            known = sizes[id(message)] = (message, len(_dumps(message)))
        total += known[1]
    listed = 2 + total + 2 * max(len(messages) - 1, 0)  # "[m, m]"
    last = sizes.get(0)  # (the last turn's tools, their size): 0 is no object's id
    if last is None or last[0] != tools:
        last = sizes[0] = (tools, len(_dumps(tools)))
    return 1 + listed + 2 + last[1] + 1


def _answer_size(step: Turn, sizes: dict[int, tuple[Any, int]] | None) -> int:
    """The characters of the turn's answer: its text and its calls' arguments as JSON
    (measured once per turn of the script, with ``sizes``)."""
    known = None if sizes is None else sizes.get(id(step))
    if known is None or known[0] is not step:
        args = _dumps([c.arguments for c in step.calls])
        known = (step, len(step.text or "") + len(args))
        if sizes is not None:
            sizes[id(step)] = known
    return known[1]


async def play(
    step: Turn,
    request: ModelRequest,
    *,
    name: str,
    clock: Any = None,
    sizes: dict[int, tuple[Any, int]] | None = None,
) -> ModelResponse:
    """``step`` as the response to ``request``: after its latency (on ``clock`` if given,
    else real time), raising what it raises, its usage estimated when it gives none
    (``sizes``: see :func:`_estimate`)."""
    if step.latency:
        if clock is not None:
            clock.sleep(step.latency)
        else:
            await asyncio.sleep(step.latency)
    if step.raises is not None:
        raise step.raises
    if step.input_tokens is not None:
        in_tokens = step.input_tokens
    else:
        in_tokens = max(1, _estimate(request, sizes) // 4)
    if step.output_tokens is not None:
        out_tokens = step.output_tokens
    else:
        out_tokens = max(1, _answer_size(step, sizes) // 4)
    if step.output_tokens is None:
        out_tokens = min(out_tokens, request.max_tokens)  # an estimate never beyond the bound
    return ModelResponse(
        text=step.text,
        tool_calls=step.calls,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        model=name,
        finish_reason=step.finish_reason,
    )


def prices(input_usd_per_mtok: float | str, output_usd_per_mtok: float | str) -> Price:
    """A :class:`~corral.models.Price` from two numbers (USD per million tokens)."""
    return Price(
        input_usd_per_mtok=Decimal(str(input_usd_per_mtok)),
        output_usd_per_mtok=Decimal(str(output_usd_per_mtok)),
    )
