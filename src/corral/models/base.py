"""The model protocol: a turn in (messages and tool specs), a turn out (text and/or tool calls).

Any object with a ``name`` and an ``async respond(request)`` (or a plain
``respond``) returning :class:`ModelResponse` can drive :func:`corral.run`.
A model signals unusable output by raising :class:`ModelOutputError`; any
other exception is a model failure (``model_error``).

The usage a model reports is checked before it is charged (:func:`usage_problem`):
token counts are whole numbers from 0 to :data:`MAX_CALL_TOKENS`. A call whose
usage fails this (or whose adapter raises :class:`InvalidUsage`) is charged at its
reservation, the worst case, and stops the run with ``model_error`` (why
``invalid_usage``): a bad figure is never a credit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from ..exceptions import ConfigError

Message = Mapping[str, Any]


#: The most tokens one model call may report, in or out. No model takes or writes anywhere
#: near a billion tokens in one call: a larger figure is a broken count, not usage.
MAX_CALL_TOKENS = 10**9


def usage_problem(input_tokens: object, output_tokens: object) -> str | None:
    """What is wrong with the token counts a model call reported, or ``None`` when both
    are whole numbers (``int``, not ``bool``) from 0 to :data:`MAX_CALL_TOKENS`."""
    for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if type(value) is not int or not 0 <= value <= MAX_CALL_TOKENS:
            return (
                f"{name} must be a whole number of tokens from 0 to {MAX_CALL_TOKENS}, "
                f"got {value!r:.60}"
            )
    return None


class InvalidUsage(Exception):
    """A model (or its endpoint) reported usage that cannot be right (negative, not a whole
    number, absurdly large). The call was made: it is charged at its reservation, and the
    run stops with ``model_error`` (why ``invalid_usage``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    """USD per million tokens, in and out: finite decimals (or whole numbers) from 0;
    anything else (negative, NaN, infinite, a float, text) raises
    :class:`~corral.exceptions.ConfigError` when the price is built."""

    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal

    def __post_init__(self) -> None:
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            rate = getattr(self, name)
            if type(rate) is int:
                rate = Decimal(rate)
                object.__setattr__(self, name, rate)  # frozen: set once, here
            if type(rate) is not Decimal or not rate.is_finite() or rate < 0:
                raise ConfigError(
                    f"Price.{name} must be a finite Decimal >= 0 (USD per million tokens), "
                    f"got {rate!r:.60}"
                )

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
