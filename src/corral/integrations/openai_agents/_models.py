"""Model calls under the run's budgets: a ``Model`` that wraps the agent's, and a
``ModelProvider`` that wraps the run's.

Each call is one ``run.model_call``: the kill switch is checked and the call's worst case
reserved (the request's size as the input bound, ``max_tokens`` as the output) before the
SDK's model is called; ``ModelSettings.max_tokens`` is clamped to what the budgets leave;
the usage the response reports is settled after (a streamed call settles from its
``response.completed`` event; one without usage is charged its worst case).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

from agents import FunctionTool, ModelProvider, ModelSettings
from agents.models.interface import Model, ModelTracing
from openai.types.responses import ResponseFunctionToolCall
from pydantic import BaseModel

from corral.exceptions import Stop, ToolRejected
from corral.gateway.guards import allowlist
from corral.integrations.openai_agents._govern import Governor, corral_name
from corral.integrations.openai_agents._stop import stopped
from corral.loop.tickets import ModelCall
from corral.models.base import input_token_bound


def _plain(item: Any) -> Any:
    """An input item as the JSON it is sent as (for the input bound)."""
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json")
    if isinstance(item, Mapping):
        return {str(k): _plain(v) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [_plain(v) for v in item]
    if item is None or isinstance(item, str | int | float | bool):
        return item
    return str(item)


def _tool_spec(tool: Any) -> dict[str, Any]:
    if isinstance(tool, FunctionTool):
        return {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.params_json_schema,
        }
    if dataclasses.is_dataclass(tool) and not isinstance(tool, type):
        fields = {f.name: getattr(tool, f.name, None) for f in dataclasses.fields(tool)}
        return {k: _plain(v) for k, v in fields.items() if not callable(v)}
    return {"name": str(getattr(tool, "name", type(tool).__name__))}


def _request(
    system_instructions: str | None,
    input: Any,
    tools: list[Any],
    output_schema: Any,
    handoffs: list[Any],
    prompt: Any,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The request's messages and tool specs, as big as what is sent (or bigger)."""
    messages: list[Any] = []
    if system_instructions:
        messages.append({"role": "system", "content": system_instructions})
    if isinstance(input, str):
        messages.append({"role": "user", "content": input})
    else:
        messages.extend(_plain(i) for i in input)
    if prompt is not None:
        messages.append(_plain(prompt))
    if output_schema is not None and not output_schema.is_plain_text():
        messages.append({"output_schema": output_schema.json_schema()})
    specs = [_tool_spec(t) for t in tools]
    specs += [
        {"name": h.tool_name, "description": h.tool_description, "parameters": h.input_json_schema}
        for h in handoffs
    ]
    return messages, specs


def _judge_unoffered(gov: Governor, output: Any, tools: list[Any], handoffs: list[Any]) -> None:
    """A call to a tool the model was not offered meets corral's allowlist: a tool the
    policy does not allow stops the run with ``tool_denied`` (recorded as the gateway
    records it); a name nobody knows is left to the SDK (its "tool not found")."""
    offered: set[str] | None = None
    for item in output:
        if not isinstance(item, ResponseFunctionToolCall):
            continue
        if offered is None:
            offered = {str(getattr(t, "name", "")) for t in tools}
            offered.update(h.tool_name for h in handoffs)
        if item.name in offered:
            continue
        name = corral_name(item.name)
        if name in gov.core.allowed:
            continue  # allowed but not offered now (kill switch, degraded): the SDK says so
        try:
            allowlist.resolve(gov.core, name)
        except ToolRejected:
            continue  # not a tool of this run: the SDK's own "tool not found"


class GovernedModel(Model):
    """The SDK's ``model`` with each call reserved and settled in the corral run."""

    def __init__(self, inner: Model, gov: Governor, name: str | None) -> None:
        self.inner = inner
        self._gov = gov
        self._name = name

    def _priced(self) -> Any:
        """The model's name (or corral.Model) for pricing: ``govern(model=...)``, else the
        name the agent gave, else the SDK model's own ``model`` name."""
        if self._gov.model is not None:
            return self._gov.model
        if self._name:
            return self._name
        own = getattr(self.inner, "model", None)
        return own if isinstance(own, str) and own else type(self.inner).__name__

    def _reserve(
        self, settings: ModelSettings, request: tuple[list[Any], list[dict[str, Any]]]
    ) -> tuple[ModelCall, ModelSettings]:
        gov = self._gov
        gov.model_seen = True
        messages, specs = request
        try:
            mc = gov.run.model_call(
                model=self._priced(),
                input_tokens=input_token_bound(messages, specs),
                max_tokens=settings.max_tokens,
            )
        except Stop as stop:
            raise stopped(stop) from None
        return mc, dataclasses.replace(settings, max_tokens=mc.max_tokens)

    async def get_response(
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> Any:
        request = _request(system_instructions, input, tools, output_schema, handoffs, prompt)
        mc, settings = self._reserve(model_settings, request)
        try:
            async with mc:
                response = await self.inner.get_response(
                    system_instructions,
                    input,
                    settings,
                    tools,
                    output_schema,
                    handoffs,
                    tracing,
                    previous_response_id=previous_response_id,
                    conversation_id=conversation_id,
                    prompt=prompt,
                )
                usage = response.usage
                mc.settle(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
            _judge_unoffered(self._gov, response.output, tools, handoffs)
        except Stop as stop:
            raise stopped(stop) from None
        return response

    async def stream_response(  # type: ignore[override]
        self,
        system_instructions: str | None,
        input: Any,
        model_settings: ModelSettings,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> AsyncIterator[Any]:
        request = _request(system_instructions, input, tools, output_schema, handoffs, prompt)
        mc, settings = self._reserve(model_settings, request)
        try:
            async with mc:
                stream = self.inner.stream_response(
                    system_instructions,
                    input,
                    settings,
                    tools,
                    output_schema,
                    handoffs,
                    tracing,
                    previous_response_id=previous_response_id,
                    conversation_id=conversation_id,
                    prompt=prompt,
                )
                async for event in stream:
                    if getattr(event, "type", None) == "response.completed":
                        usage = getattr(event.response, "usage", None)
                        if usage is not None:
                            mc.settle(
                                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
                            )
                    yield event
        except Stop as stop:
            raise stopped(stop) from None

    def get_retry_advice(self, request: Any) -> Any:
        return self.inner.get_retry_advice(request)

    async def close(self) -> None:
        await self.inner.close()

    async def _cleanup_on_run_end(self, owner: object) -> None:
        await self.inner._cleanup_on_run_end(owner)


class GovernedProvider(ModelProvider):
    """The run's ``model_provider`` with each model it gives governed."""

    def __init__(self, inner: ModelProvider, gov: Governor) -> None:
        self.inner = inner
        self._gov = gov
        self._models: dict[str | None, GovernedModel] = {}

    def get_model(self, model_name: str | None) -> Model:
        found = self._models.get(model_name)
        if found is None:
            inner = self.inner.get_model(model_name)
            found = self._models[model_name] = GovernedModel(inner, self._gov, model_name)
        return found

    async def aclose(self) -> None:
        await self.inner.aclose()
