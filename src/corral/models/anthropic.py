"""Anthropic Messages: the adapter, and how usage is read.

:class:`AnthropicModel` speaks ``POST {base_url}/v1/messages`` with tool use. System
messages become the ``system`` field, tool results become ``tool_result`` blocks of
a user turn, and consecutive turns of one role are merged, as the API requires.

>>> AnthropicModel("claude-sonnet-4-5", api_key="sk-...")
AnthropicModel('claude-sonnet-4-5', base_url='https://api.anthropic.com')

Usage is the input tokens (cache reads and writes included) and the output
tokens the API reports, priced at the model's input and output prices. If you call
the ``anthropic`` SDK yourself, see :mod:`corral.integrations.anthropic`
(``create_message`` & co.).

Imports ``corral.models`` (``base``, ``_http``, ``_wire``) and the top-level modules;
nothing of the loop or the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.models._http import Caller, PooledModel, RetryBudget, RetryPolicy
from corral.models._wire import (
    arguments_object,
    call_parts,
    check_options,
    count,
    field,
    offered_names,
    response,
    text_of,
    vendor_key,
)
from corral.models.base import (
    Message,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
    wire_name,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["ANTHROPIC_URL", "API_VERSION", "AnthropicModel", "usage_of"]

ANTHROPIC_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

#: Anthropic's stop reasons in corral's terms (``length`` is a truncated turn).
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
}


class AnthropicModel(PooledModel):
    """The Anthropic Messages API as a corral model.

    ``api_key`` defaults to ``ANTHROPIC_API_KEY`` only for Anthropic's own address;
    there, with no key at all (none given, the variable unset or empty, no ``x-api-key``
    or ``authorization`` header), the constructor raises :class:`~corral.ConfigError`
    naming ``ANTHROPIC_API_KEY`` (``api_key=""`` sends none on purpose).
    The price comes from the policy, else ``price``, else the genai-prices table
    (by ``name`` at ``provider`` or at the provider behind ``base_url``).
    ``options`` adds body fields such as ``temperature`` or ``tool_choice``;
    streaming is refused. Use ``async with model:`` to keep one pooled connection.
    """

    #: ``gen_ai.provider.name`` of its spans.
    genai_provider = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        base_url: str = ANTHROPIC_URL,
        api_key: str | None = None,
        provider: str | None = None,
        price: Price | None = None,
        options: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.provider = provider
        self.price = price
        self.options = check_options(options)
        if api_key is None and self.base_url == ANTHROPIC_URL:
            api_key = vendor_key(
                "AnthropicModel",
                "ANTHROPIC_API_KEY",
                ANTHROPIC_URL,
                headers=headers,
                client=client,
                auth_headers=("x-api-key", "authorization"),
            )
        self._headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **(headers or {}),
        }
        if api_key:
            self._headers["x-api-key"] = api_key
        self._caller = Caller(retry=retry, budget=retry_budget, client=client)

    def __repr__(self) -> str:
        return f"AnthropicModel({self.name!r}, base_url={self.base_url!r})"

    def body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        system, messages = _messages(request.messages)
        body: dict[str, Any] = {
            "model": self.name,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = system
        if request.tools:
            offered_names(request.tools)  # refuses two tools sharing a wire name
            body["tools"] = [
                {
                    "name": wire_name(str(spec["name"])),
                    "description": str(spec.get("description", "")),
                    "input_schema": spec.get("parameters") or {"type": "object", "properties": {}},
                }
                for spec in request.tools
            ]
        body.update(self.options)
        return body

    async def respond(self, request: ModelRequest) -> ModelResponse:
        """One Messages call; raises :class:`~corral.models.ModelAPIError` when the API
        fails and :class:`~corral.ModelOutputError` when its answer is unusable."""
        names = offered_names(request.tools)
        data = await self._caller.post_json(
            f"{self.base_url}/v1/messages",
            self.body(request),
            headers=self._headers,
            timeout=request.timeout,
        )
        return parse(data, names, request)


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    role = str(message.get("role"))
    content = message.get("content")
    if role == "tool":
        result = {
            "type": "tool_result",
            "tool_use_id": str(message.get("tool_call_id", "")),
            "content": text_of(content),
        }
        return "user", [result]
    if isinstance(content, list):
        blocks = [dict(b) for b in content]
    else:
        text = text_of(content)
        blocks = [{"type": "text", "text": text}] if text else []  # empty text is refused
    if role == "assistant":
        for call_id, name, args in map(call_parts, message.get("tool_calls") or ()):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call_id,
                    "name": wire_name(name),
                    "input": arguments_object(args),
                }
            )
    return ("assistant" if role == "assistant" else "user"), blocks


def _messages(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and the alternating user/assistant turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def parse(
    data: Mapping[str, Any], names: Mapping[str, str], request: ModelRequest
) -> ModelResponse:
    """A :class:`ModelResponse` from a Messages answer; tool names mapped back.

    ``stop_reason: max_tokens`` becomes ``finish_reason="length"`` with the tool calls
    dropped (a truncated call is never executed); corral then stops with
    ``invalid_model_output``. Without usage, the reserved worst case is reported; usage
    that cannot be right raises :class:`~corral.models.InvalidUsage`.
    """
    content = data.get("content")
    if not isinstance(content, list):
        raise ModelOutputError("the message has no content list")
    texts: list[str] = []
    calls: list[ToolCallRequest] = []
    for block in content:
        if not isinstance(block, Mapping):
            raise ModelOutputError(f"a content block is not an object: {block!r:.120}")
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            wire = block.get("name")
            if not isinstance(wire, str):
                raise ModelOutputError(f"a tool_use block without a name: {block!r:.120}")
            arguments = block.get("input")
            calls.append(
                ToolCallRequest(
                    name=names.get(wire, wire),
                    arguments=arguments if isinstance(arguments, Mapping | str) else {},
                    id=str(block.get("id") or ""),
                )
            )
    stop = str(data.get("stop_reason") or ("tool_use" if calls else "end_turn"))
    finish = STOP_REASONS.get(stop, stop)
    return response(
        data, request, text="".join(texts) or None, calls=calls, finish=finish, usage=usage_of(data)
    )


# -- usage, also of a response of the anthropic SDK (corral.integrations.anthropic) ---


def usage_of(response: Any) -> tuple[int, int] | None:
    """``(input_tokens, output_tokens)`` of a Messages answer (SDK object or dict), with
    cache reads and writes counted as input; ``None`` when it carries no usage; raises
    :class:`~corral.models.InvalidUsage` for counts that cannot be right."""
    usage = field(response, "usage")
    if usage is None:
        return None
    tin = count(field(usage, "input_tokens"), "input_tokens")
    tout = count(field(usage, "output_tokens"), "output_tokens")
    if tin is None or tout is None:
        return None
    for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        tin += count(field(usage, extra), extra) or 0
    return tin, tout
