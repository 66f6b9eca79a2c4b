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

Also the two facts of a request both the loop and the adapters need: its input-token
bound (:func:`input_token_bound`) and a tool's name on the wire (:func:`wire_name`).

Imports only the top-level modules (``corral._safe``, ``corral.exceptions``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from corral._safe import shown, text, type_name
from corral.exceptions import ConfigError

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
                f"got {shown(value)}"
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
                    f"got {shown(rate)}"
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


#: Tokens added to a request's input bound per message and per tool spec (role markers,
#: separators), on top of the size of its JSON.
PER_MESSAGE_OVERHEAD = 8


# json.dumps(value, ensure_ascii=False, default=str), without building an encoder per call.
_REQUEST_JSON = json.JSONEncoder(ensure_ascii=False, default=str).encode


def input_token_bound(messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]) -> int:
    """An upper bound of the input tokens of a request: the UTF-8 bytes of its JSON (no
    tokenizer makes more tokens than bytes), plus a small overhead per message and tool.

    The gateway reserves this before a call; an adapter reports it when the endpoint
    reports no usage (the reserved worst case). It lives with the model protocol
    because both need it and the adapters import nothing of the loop, the gateway or
    the budgets.
    """
    body = _REQUEST_JSON([list(messages), list(tools)])
    return len(body.encode()) + PER_MESSAGE_OVERHEAD * (len(messages) + len(tools)) + 16


def json_bytes(item: Any) -> int:
    """The UTF-8 bytes of one message's or tool spec's JSON, as :func:`input_token_bound`
    counts it inside the request (raises as it would)."""
    return len(_REQUEST_JSON(item).encode())


def bound_of(message_bytes: int, messages: int, tool_bytes: int, tools: int) -> int:
    """:func:`input_token_bound` of ``messages`` messages and ``tools`` tool specs whose
    :func:`json_bytes` add up to ``message_bytes`` and ``tool_bytes``: the same figure,
    for a history whose messages were measured once, as they were added.

    >>> msgs, specs = [{"role": "user", "content": "hé"}, {"role": "tool"}], [{"name": "t"}]
    >>> sizes = sum(map(json_bytes, msgs)), sum(map(json_bytes, specs))
    >>> bound_of(sizes[0], 2, sizes[1], 1) == input_token_bound(msgs, specs)
    True
    """
    # "[[m, m, ...], [t, ...]]": two brackets each, ", " between items and between lists
    body = 4 + message_bytes + 2 + 2 * max(messages - 1, 0) + tool_bytes + 2
    body += 2 * max(tools - 1, 0)
    return body + PER_MESSAGE_OVERHEAD * (messages + tools) + 16


def wire_name(name: str) -> str:
    """A tool name as OpenAI and Anthropic accept it (``[a-zA-Z0-9_-]``): dots become ``__``.

    The adapters send tools under this name and the run's ``tool_specs`` offers them
    under it, so both spell a name the same way.
    """
    return name.replace(".", "__")


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


#: Bounds on one response's structure (what a model adapter, or a hostile model object,
#: can hand the loop): longer names or ids, bigger arguments, more calls are refused.
MAX_TOOL_NAME_CHARS = 256
MAX_CALL_ID_CHARS = 1024
MAX_ARGUMENT_CHARS = 1_000_000
MAX_TOOL_CALLS = 256
#: The deepest the arguments of a tool call may nest.
MAX_ARGUMENT_DEPTH = 64

_JSON_ARGUMENTS = json.JSONEncoder(ensure_ascii=False, allow_nan=False, sort_keys=True)


def validate_response(response: Any) -> ModelResponse:
    """``response`` if its structure and types are what the loop relies on, else raise
    :class:`ModelOutputError` naming the first problem.

    Checked: a :class:`ModelResponse`; ``text`` None or a string; ``tool_calls`` a list
    or tuple of at most :data:`MAX_TOOL_CALLS` :class:`ToolCallRequest`, each with a
    non-empty string name (no NUL, at most :data:`MAX_TOOL_NAME_CHARS`), a string ``id``,
    and arguments that are a JSON object or its text (at most
    :data:`MAX_ARGUMENT_CHARS`); ``model`` and ``finish_reason`` strings. Then the usage:
    token counts that :func:`usage_problem` finds wrong raise :class:`InvalidUsage`
    (the call is charged at its reservation, ``model_error``). ``str`` subclasses come
    back as plain strings, a subclass of :class:`ModelResponse` as a plain one holding
    the figures read once. Reading the response never raises anything else.
    """
    if not isinstance(response, ModelResponse):
        raise ModelOutputError(f"the model returned {type_name(response)}, not a ModelResponse")
    try:
        return _validated(response)
    except (ModelOutputError, InvalidUsage):
        raise
    except Exception as exc:  # a subclass whose fields raise when read
        raise ModelOutputError(f"the response cannot be read: {type_name(exc)}") from None


def _validated(r: ModelResponse) -> ModelResponse:
    answer, calls = r.text, r.tool_calls
    if answer is not None and not isinstance(answer, str):
        raise ModelOutputError(f"text must be a string or None, got {type_name(answer)}")
    if type(calls) is not tuple and type(calls) is not list:
        if not isinstance(calls, list | tuple):
            raise ModelOutputError(f"tool_calls must be a list, got {type_name(calls)}")
        # A subclass: read through the base type, never through its own methods.
        calls = list(list.__iter__(calls) if isinstance(calls, list) else tuple.__iter__(calls))
    if len(calls) > MAX_TOOL_CALLS:
        raise ModelOutputError(
            f"{len(calls)} tool calls in one turn, the limit is {MAX_TOOL_CALLS}"
        )
    checked = [_call(i, call) for i, call in enumerate(calls)]
    model, finish = r.model, r.finish_reason
    for field_name, value in (("model", model), ("finish_reason", finish)):
        if not isinstance(value, str):
            raise ModelOutputError(f"{field_name} must be a string, got {type_name(value)}")
    tin, tout = r.input_tokens, r.output_tokens  # read once: these are what is charged
    problem = usage_problem(tin, tout)
    if problem is not None:
        raise InvalidUsage(problem)
    unchanged = all(a is b for a, b in zip(checked, calls, strict=True))
    if (
        type(r) is ModelResponse  # a subclass could answer a second read differently
        and unchanged
        and calls is r.tool_calls
        and (answer is None or type(answer) is str)
        and type(model) is str
        and type(finish) is str
    ):
        return r  # the usual case: nothing to copy
    return ModelResponse(
        text=None if answer is None else str.__str__(answer),
        tool_calls=tuple(checked),
        input_tokens=tin,
        output_tokens=tout,
        model=str.__str__(model),
        finish_reason=str.__str__(finish),
    )


def _call(i: int, call: Any) -> ToolCallRequest:
    where = f"tool call {i}"
    if not isinstance(call, ToolCallRequest):
        raise ModelOutputError(f"{where} must be a ToolCallRequest, got {type_name(call)}")
    name, args, call_id = call.name, call.arguments, call.id
    if not isinstance(name, str):
        raise ModelOutputError(f"{where}: the tool name must be a string, got {type_name(name)}")
    name = str.__str__(name)  # a subclass's own methods are never called
    if not name or len(name) > MAX_TOOL_NAME_CHARS or "\0" in name:
        raise ModelOutputError(
            f"{where}: the tool name {name[:40]!r} is empty, longer than "
            f"{MAX_TOOL_NAME_CHARS} characters or holds a NUL"
        )
    if not isinstance(call_id, str):
        raise ModelOutputError(
            f"{where} ({name}): the call id must be a string, got {type_name(call_id)}"
        )
    call_id = str.__str__(call_id)
    if len(call_id) > MAX_CALL_ID_CHARS or "\0" in call_id:
        raise ModelOutputError(
            f"{where} ({name}): the call id is longer than {MAX_CALL_ID_CHARS} characters "
            "or holds a NUL"
        )
    if isinstance(args, str):
        args = str.__str__(args)
        size, body = len(args), args
    elif isinstance(args, dict):
        if type(args) is not dict:
            args = dict(dict.items(args))
        try:
            body = _JSON_ARGUMENTS.encode(args)
            size = len(body)
        except RecursionError:
            raise ModelOutputError(
                f"{where} ({name}): the arguments are nested too deeply"
            ) from None
        except (TypeError, ValueError) as exc:
            raise ModelOutputError(
                f"{where} ({name}): the arguments are not a JSON object ({text(exc, 200)})"
            ) from None
    else:
        raise ModelOutputError(
            f"{where} ({name}): the arguments must be a JSON object or its text, "
            f"got {type_name(args)}"
        )
    if size > MAX_ARGUMENT_CHARS:
        raise ModelOutputError(
            f"{where} ({name}): the arguments are {size} characters, the limit is "
            f"{MAX_ARGUMENT_CHARS}"
        )
    if _nesting(body) > MAX_ARGUMENT_DEPTH:
        raise ModelOutputError(
            f"{where} ({name}): the arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep"
        )
    if name is call.name and call_id is call.id and args is call.arguments:
        return call
    return ToolCallRequest(name=name, arguments=args, id=call_id)


def _nesting(body: str) -> int:
    """How deep brackets nest in JSON ``body``, outside strings (an upper bound for text
    that is not JSON). Counted only when there are enough brackets to matter."""
    if body.count("[") + body.count("{") <= MAX_ARGUMENT_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for ch in body:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


@runtime_checkable
class Model(Protocol):
    name: str

    def respond(self, request: ModelRequest) -> Any:
        """Return a :class:`ModelResponse`, or an awaitable of one."""
        ...


def genai_provider(model: object) -> str | None:
    """The provider a model names for traces (``gen_ai.provider.name``: ``openai``,
    ``anthropic``, ...) in its ``genai_provider`` attribute, or ``None``."""
    value = getattr(model, "genai_provider", None)
    return value if isinstance(value, str) and value else None
