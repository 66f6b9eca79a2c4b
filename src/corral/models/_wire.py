"""What both adapters share: wire-safe tool names, arguments as JSON, usage fallbacks.

Imports ``corral.models.base`` and the top-level modules; nothing of the loop or the
gateway (``corral.integrations`` reuses some of it for the SDK helpers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from corral._safe import shown
from corral.exceptions import ConfigError
from corral.models.base import (
    MAX_CALL_TOKENS,
    InvalidUsage,
    ModelRequest,
    ModelResponse,
    ToolCallRequest,
    input_token_bound,
    wire_name,
)

#: Body keys an adapter sets itself; ``options`` may not override them.
RESERVED = frozenset(
    {"model", "messages", "system", "tools", "max_tokens", "max_completion_tokens", "n"}
)

STREAMING_REFUSED = (
    "streaming is not supported: corral needs the whole turn (its tool calls and its "
    "usage) before it can settle the budget and pass the calls through the gateway; "
    "leave `stream` unset"
)


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Extra body fields (temperature, tool_choice, ...), refusing the ones corral controls."""
    out = dict(options or {})
    if out.get("stream") or "stream_options" in out:
        raise ConfigError(STREAMING_REFUSED)
    out.pop("stream", None)
    clash = sorted(RESERVED & out.keys())
    if clash:
        raise ConfigError(
            f"options may not set {', '.join(clash)}: corral sets them from the request "
            "(max_tokens is clamped to the budgets; one choice per call)"
        )
    return out


def vendor_key(
    adapter: str,
    variable: str,
    url: str,
    *,
    headers: Mapping[str, str] | None,
    client: Any,
    auth_headers: tuple[str, ...],
) -> str | None:
    """The API key from ``variable`` for a vendor's own ``url``, or ``None`` when the
    request is authenticated otherwise (a header given, or a client of the caller's own
    carrying one). Without either, a :class:`~corral.ConfigError` naming the variable: a
    model that cannot authenticate is a setup mistake, found when it is built rather
    than at its first call, deep in a run (``api_key=""`` sends no key on purpose)."""
    key = os.environ.get(variable)
    if key:
        return key
    given = {name.lower() for name in (headers or {})}
    given |= {name.lower() for name in getattr(client, "headers", None) or {}}
    if given & set(auth_headers):
        return None
    state = "is empty" if key == "" else "is not set"
    raise ConfigError(
        f"{adapter} has no API key for {url}: {variable} {state}; set it, or pass "
        f'api_key=... (api_key="" sends none, e.g. to a gateway that adds the key)'
    )


def offered_names(tools: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Wire name → tool name, for the tools offered in one request."""
    names: dict[str, str] = {}
    for spec in tools:
        name = str(spec["name"])
        wire = wire_name(name)
        other = names.setdefault(wire, name)
        if other != name:
            raise ConfigError(
                f"tools {other!r} and {name!r} have the same wire name {wire!r}; rename one"
            )
    return names


def call_parts(call: Mapping[str, Any]) -> tuple[str, str, Any]:
    """``(id, name, arguments)`` of a tool call in corral's neutral form or OpenAI's."""
    fn = call.get("function")
    if isinstance(fn, Mapping):
        return str(call.get("id", "")), str(fn.get("name", "")), fn.get("arguments", "{}")
    return str(call.get("id", "")), str(call.get("name", "")), call.get("arguments", "{}")


def arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def arguments_object(arguments: Any) -> dict[str, Any]:
    """Arguments as a JSON object (Anthropic wants one); text that is not one is kept whole."""
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        parsed = json.loads(arguments)
    except (TypeError, ValueError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": str(arguments)}


def text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return str(content)


def worst_case_usage(request: ModelRequest) -> tuple[int, int]:
    """Usage to report when the endpoint reported none: the reserved worst case."""
    return input_token_bound(request.messages, request.tools), request.max_tokens


def count(value: Any, name: str = "token count") -> int | None:
    """A token count from a usage field, or ``None`` when the field is absent.

    A count that is present but cannot be right (not a whole number from 0 to
    :data:`~corral.models.base.MAX_CALL_TOKENS`) raises :class:`InvalidUsage`: the
    call is then charged at its reservation, never at the endpoint's figure.
    """
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_CALL_TOKENS:
        raise InvalidUsage(
            f"the endpoint reported {name} {shown(value)}, not a whole number of tokens "
            f"from 0 to {MAX_CALL_TOKENS}"
        )
    return value


def field(obj: Any, key: str) -> Any:
    """``obj[key]`` of a dict, or ``obj.key`` of an SDK object (``None`` when absent)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def response(
    data: Mapping[str, Any],
    request: ModelRequest,
    *,
    text: str | None,
    calls: list[ToolCallRequest],
    finish: str,
    usage: tuple[int, int] | None,
) -> ModelResponse:
    """The turn as corral sees it. A truncated turn keeps no tool calls (they are never
    executed); a turn without usage reports the reserved worst case."""
    input_tokens, output_tokens = usage if usage is not None else worst_case_usage(request)
    return ModelResponse(
        text=text,
        tool_calls=() if finish == "length" else tuple(calls),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model=str(data.get("model") or ""),
        finish_reason=finish,
    )
