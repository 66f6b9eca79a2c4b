"""OpenAI-compatible chat completions: the adapter, and how usage is read.

:class:`OpenAIModel` speaks ``POST {base_url}/chat/completions`` with tool calling,
to OpenAI or anything that speaks its protocol (vLLM, Ollama, llama.cpp server,
LM Studio). It sends the clamped ``max_tokens`` of each turn and reports the
usage the endpoint returns.

>>> model = OpenAIModel("llama3.1", base_url="http://127.0.0.1:11434/v1")
>>> model
OpenAIModel('llama3.1', base_url='http://127.0.0.1:11434/v1')

If you call the ``openai`` SDK yourself, the helpers in
:mod:`corral.integrations.openai` (``chat_completion`` & co.) put that call inside
the run's model-call reservation in one line.

Imports ``corral.models`` (``base``, ``_http``, ``_wire``) and the top-level modules;
nothing of the loop or the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from corral.exceptions import ConfigError
from corral.models._http import Caller, ModelAPIError, PooledModel, RetryBudget, RetryPolicy
from corral.models._wire import (
    arguments_text,
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

__all__ = ["OPENAI_URL", "OpenAIModel", "usage_of"]

OPENAI_URL = "https://api.openai.com/v1"
MaxTokensField = Literal["max_tokens", "max_completion_tokens"]


class OpenAIModel(PooledModel):
    """A chat-completions endpoint as a corral model.

    ``api_key`` defaults to ``OPENAI_API_KEY`` only for OpenAI's own address: a key
    is never sent to another host unless given. At OpenAI's address with no key (none
    given, the variable unset or empty, no ``authorization`` header) the constructor
    raises :class:`~corral.ConfigError` naming ``OPENAI_API_KEY``; ``api_key=""``
    sends no key on purpose. The price comes from the policy's
    ``models.prices``, else ``price``, else the genai-prices table for ``name`` at
    ``provider`` (a genai-prices provider id) or at the provider behind
    ``base_url``; a local server is unpriced unless priced explicitly.

    ``max_tokens_field`` names the body field for the clamped ``max_tokens``
    (OpenAI's reasoning models take ``max_completion_tokens``); ``options`` adds
    body fields such as ``temperature`` or ``tool_choice``. Streaming is refused.
    Use ``async with model:`` to keep one pooled connection for many calls.
    """

    #: ``gen_ai.provider.name`` of its spans: the API it speaks (also at another address).
    genai_provider = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str = OPENAI_URL,
        api_key: str | None = None,
        provider: str | None = None,
        price: Price | None = None,
        max_tokens_field: MaxTokensField = "max_tokens",
        options: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudget | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"max_tokens_field must be max_tokens or max_completion_tokens, "
                f"got {max_tokens_field!r}"
            )
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.provider = provider
        self.price = price
        self.max_tokens_field: MaxTokensField = max_tokens_field
        self.options = check_options(options)
        if api_key is None and self.base_url == OPENAI_URL:
            api_key = vendor_key(
                "OpenAIModel",
                "OPENAI_API_KEY",
                OPENAI_URL,
                headers=headers,
                client=client,
                auth_headers=("authorization",),
            )
        self._headers = {"content-type": "application/json", **(headers or {})}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._caller = Caller(retry=retry, budget=retry_budget, client=client)

    def __repr__(self) -> str:
        return f"OpenAIModel({self.name!r}, base_url={self.base_url!r})"

    def body(self, request: ModelRequest) -> dict[str, Any]:
        """The JSON body sent for ``request``."""
        body: dict[str, Any] = {
            "model": self.name,
            "messages": [_message(m) for m in request.messages],
            self.max_tokens_field: request.max_tokens,
        }
        if request.tools:
            offered_names(request.tools)  # refuses two tools sharing a wire name
            body["tools"] = [_tool(spec) for spec in request.tools]
        body.update(self.options)
        return body

    async def respond(self, request: ModelRequest) -> ModelResponse:
        """One chat completion; raises :class:`~corral.models.ModelAPIError` when the
        endpoint fails and :class:`~corral.ModelOutputError` when its answer is unusable."""
        names = offered_names(request.tools)
        data = await self._caller.post_json(
            f"{self.base_url}/chat/completions",
            self.body(request),
            headers=self._headers,
            timeout=request.timeout,
        )
        return parse(data, names, request)


def _tool(spec: Mapping[str, Any]) -> dict[str, Any]:
    function = {
        "name": wire_name(str(spec["name"])),
        "description": str(spec.get("description", "")),
        "parameters": spec.get("parameters") or {"type": "object", "properties": {}},
    }
    return {"type": "function", "function": function}


def _message(message: Message) -> dict[str, Any]:
    role = message.get("role")
    if role == "tool":
        return {
            "role": "tool",
            "tool_call_id": str(message.get("tool_call_id", "")),
            "content": text_of(message.get("content")),
        }
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or None}
        calls = message.get("tool_calls") or ()
        if calls:
            out["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": wire_name(name), "arguments": arguments_text(args)},
                }
                for call_id, name, args in map(call_parts, calls)
            ]
        elif out["content"] is None:
            out["content"] = ""
        return out
    return {"role": role, "content": message.get("content", "")}


def parse(
    data: Mapping[str, Any], names: Mapping[str, str], request: ModelRequest
) -> ModelResponse:
    """A :class:`ModelResponse` from a chat-completion body; tool names mapped back.

    A turn cut at ``max_tokens`` keeps its text but drops its tool calls (a truncated
    call is never executed); corral then stops with ``invalid_model_output``. When
    the endpoint reports no usage, the reserved worst case is reported; usage that
    cannot be right raises :class:`~corral.models.InvalidUsage`.
    """
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        if "error" in data:  # some servers answer 200 with an error body
            raise ModelAPIError(f"the endpoint answered an error: {str(data['error'])[:300]}")
        raise ModelOutputError("the chat completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise ModelOutputError("the chat completion's choice has no message")
    text = text_of(message.get("content")) or text_of(message.get("refusal")) or None
    calls: list[ToolCallRequest] = []
    for raw in message.get("tool_calls") or ():
        fn = raw.get("function") if isinstance(raw, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ModelOutputError(f"a tool call without a function name: {raw!r:.120}")
        wire = str(fn["name"])
        arguments = fn.get("arguments")
        calls.append(
            ToolCallRequest(
                name=names.get(wire, wire),
                arguments=arguments if isinstance(arguments, str | Mapping) else "",
                id=str(raw.get("id") or ""),
            )
        )
    finish = str(choice.get("finish_reason") or ("tool_calls" if calls else "stop"))
    return response(data, request, text=text, calls=calls, finish=finish, usage=usage_of(data))


# -- usage, also of a response of the openai SDK (corral.integrations.openai) ---------


def usage_of(response: Any) -> tuple[int, int] | None:
    """``(input_tokens, output_tokens)`` of a chat completion or a Responses API answer
    (an SDK object or a dict), or ``None`` when it carries no usage; raises
    :class:`~corral.models.InvalidUsage` for counts that cannot be right."""
    usage = field(response, "usage")
    if usage is None:
        return None
    for names in (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")):
        tin, tout = (count(field(usage, n), n) for n in names)
        if tin is not None and tout is not None:
            return tin, tout
    return None
