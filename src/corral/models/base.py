"""The model protocol: a turn in (messages and tool specs), a turn out (text and/or tool calls).

Any object with a ``name`` and an ``async respond(request)`` (or a plain
``respond``) returning :class:`ModelResponse` can drive :func:`corral.run`.
A model signals unusable output by raising :class:`ModelOutputError`; any
other exception is a model failure (``model_error``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    """USD per million tokens, in and out."""

    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (
            self.input_usd_per_mtok * input_tokens + self.output_usd_per_mtok * output_tokens
        ) / Decimal(1_000_000)


FREE = Price(input_usd_per_mtok=Decimal(0), output_usd_per_mtok=Decimal(0))


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallRequest:
    """A tool call the model asked for. ``arguments`` may be a raw string the model wrote."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRequest:
    """One turn asked of a model.

    ``max_tokens`` is already clamped to what the budgets allow; ``timeout`` is the
    seconds the whole call may take, retries included (clamped to the time the run
    has left), or ``None`` when the caller sets no deadline.
    """

    messages: Sequence[Message]
    tools: Sequence[Mapping[str, Any]]
    max_tokens: int
    timeout: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelResponse:
    text: str | None = None
    tool_calls: Sequence[ToolCallRequest] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    model: str = ""
    finish_reason: str = "stop"


class ModelOutputError(Exception):
    """The model's output cannot be used (unparsable, truncated, empty)."""


@runtime_checkable
class Model(Protocol):
    name: str

    def respond(self, request: ModelRequest) -> Any:
        """Return a :class:`ModelResponse`, or an awaitable of one."""
        ...
