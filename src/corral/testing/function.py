"""A model driven by a plain function: each turn, your function reads the request and answers.

Where :class:`~corral.testing.ScriptedModel` plays a fixed script, a
:class:`FunctionModel` decides from what it is asked (the messages so far, the tools on
offer, the token bound), the way a test double for a real model usually has to. Imports
the model protocol and :mod:`corral.testing.scripted`, nothing else of corral.

>>> from corral.testing import FunctionModel, call
>>> def reply(request):
...     if request.messages[-1]["role"] == "tool":
...         return "done"
...     return call("search.read", query="vendor")
>>> model = FunctionModel(reply)
>>> model.name
'function'
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeAlias

from corral._safe import type_name
from corral.models.base import FREE, ModelRequest, ModelResponse, Price, ToolCallRequest
from corral.testing.scripted import Turn, new_call_id, play

#: What the function may answer: the text of a final answer, a :class:`Turn` (from
#: :func:`~corral.testing.call`, :func:`~corral.testing.final`, ...), one tool call or a
#: list of them (and of turns, their calls merged), or a whole :class:`ModelResponse`.
Reply: TypeAlias = str | Turn | ToolCallRequest | Sequence[Turn | ToolCallRequest] | ModelResponse
ReplyFunction: TypeAlias = Callable[[ModelRequest], Reply | Awaitable[Reply]]


class FunctionModel:
    """A model whose every turn is ``function(request)``, plain or ``async``.

    Whatever the function answers becomes a :class:`~corral.ModelResponse`: usage, when
    the answer does not give it (a :class:`ModelResponse` does), is estimated from the
    request and the output as :class:`~corral.testing.ScriptedModel` does, never above
    the request's ``max_tokens``. A tool call without an id gets one. What the function
    raises, the model raises: :class:`~corral.ModelOutputError` is
    ``invalid_model_output``, anything else ``model_error``. Free unless given a
    ``price``; ``clock`` is the clock a :func:`~corral.testing.slow` turn waits on.
    ``requests`` lists every request received.
    """

    def __init__(
        self,
        function: ReplyFunction,
        *,
        name: str = "function",
        price: Price | None = FREE,
        clock: Any = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"FunctionModel needs a function, got {type_name(function)}")
        self.function = function
        self.name = name
        self.price = price
        self.clock = clock
        self.requests: list[ModelRequest] = []

    async def respond(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        reply = self.function(request)
        if inspect.isawaitable(reply):
            reply = await reply
        if isinstance(reply, ModelResponse):
            return reply
        return await play(as_turn(reply), request, name=self.name, clock=self.clock)


def as_turn(reply: object) -> Turn:
    """``reply`` (see :data:`Reply`) as the :class:`Turn` it stands for."""
    if isinstance(reply, str):
        return Turn(text=reply)
    if isinstance(reply, Turn):
        return reply
    if isinstance(reply, ToolCallRequest):
        return Turn(calls=(_with_id(reply),))
    if isinstance(reply, list | tuple):
        calls: list[ToolCallRequest] = []
        for part in reply:
            if isinstance(part, ToolCallRequest):
                calls.append(_with_id(part))
            elif isinstance(part, Turn):
                calls.extend(part.calls)
            else:
                raise TypeError(f"a FunctionModel reply list holds {type_name(part)}")
        return Turn(calls=tuple(calls))
    raise TypeError(
        f"a FunctionModel function returned {type_name(reply)}: expected text, a Turn, "
        "a ToolCallRequest, a list of them, or a ModelResponse"
    )


def _with_id(call: ToolCallRequest) -> ToolCallRequest:
    return call if call.id else replace(call, id=new_call_id())
