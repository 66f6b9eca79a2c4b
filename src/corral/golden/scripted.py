"""The golden runner's scripted model: one task's turns, played in order.

A model over :mod:`corral.models.base` (the test kit's ``ScriptedModel`` is for users' own
tests, and production code does not import it). Token counts a turn leaves out are
estimated as the test kit estimates them: a quarter of the characters of the request's JSON
in, of the answer's text and arguments out. Past the last turn the model's output is
unusable (``invalid_model_output``); an ``error`` turn is a failing endpoint
(``model_error``).

>>> import asyncio
>>> from corral.golden.suite import ScriptTurn
>>> from corral.models.base import ModelRequest
>>> model = GoldenScript([ScriptTurn(answer="done", input_tokens=10, output_tokens=2)])
>>> r = asyncio.run(model.respond(ModelRequest(messages=[], tools=[], max_tokens=100)))
>>> r.text, r.input_tokens, r.output_tokens
('done', 10, 2)
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

from corral.golden.suite import ScriptTurn
from corral.models.base import (
    FREE,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)

_dumps = json.JSONEncoder(default=str).encode


class ScriptedModelError(ConnectionError):
    """What an ``error`` turn raises: the model endpoint failed."""


def _calls(turn: ScriptTurn, index: int) -> tuple[ToolCallRequest, ...]:
    if turn.call is not None:
        args = turn.args if turn.args is not None else {}
        return (ToolCallRequest(name=turn.call, arguments=args, id=f"call_{index}_0"),)
    return tuple(
        ToolCallRequest(name=c.name, arguments=c.args, id=f"call_{index}_{i}")
        for i, c in enumerate(turn.calls or ())
    )


class GoldenScript:
    """A model playing ``turns`` once, in order (one instance per run); free unless the
    policy prices its ``name`` (``models.prices``)."""

    price: Price = FREE

    def __init__(self, turns: Sequence[ScriptTurn], *, name: str = "scripted") -> None:
        self.turns = list(turns)
        self.name = name
        self._next = 0
        self._lock = threading.Lock()

    async def respond(self, request: ModelRequest) -> ModelResponse:
        with self._lock:
            index = self._next
            self._next += 1
        if index >= len(self.turns):
            raise ModelOutputError(f"the script has no turn {index + 1} (it has {index})")
        turn = self.turns[index]
        if turn.error is not None:
            raise ScriptedModelError(turn.error)
        calls = _calls(turn, index)
        if turn.input_tokens is not None:
            tokens_in = turn.input_tokens
        else:
            tokens_in = max(1, len(_dumps([list(request.messages), list(request.tools)])) // 4)
        if turn.output_tokens is not None:
            tokens_out = turn.output_tokens
        else:
            written = len(turn.answer or "") + len(_dumps([c.arguments for c in calls]))
            tokens_out = min(request.max_tokens, max(1, written // 4))
        return ModelResponse(
            text=turn.answer,
            tool_calls=calls,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            model=self.name,
        )
