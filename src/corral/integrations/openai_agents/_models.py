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
import json
from collections.abc import AsyncIterator
from typing import Any

from agents import FunctionTool, ModelProvider, ModelSettings
from agents.models.interface import Model, ModelTracing
from openai.types.responses import ResponseCompletedEvent, ResponseFunctionToolCall
from pydantic import BaseModel

from corral.exceptions import Stop, ToolRejected
from corral.gateway.guards import allowlist
from corral.integrations.openai_agents._govern import Governor, corral_name
from corral.integrations.openai_agents._stop import stopped
from corral.loop.tickets import ModelCall
from corral.models.base import PER_MESSAGE_OVERHEAD


def _json_default(value: Any) -> Any:
    """What the encoder cannot write itself, as the JSON it is sent as."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if callable(value):
        return None  # a hosted tool's hook: not sent
    return str(value)


_ENCODE = json.JSONEncoder(ensure_ascii=False, default=_json_default).encode


def _tool_spec(tool: Any) -> Any:
    if isinstance(tool, FunctionTool):
        return {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.params_json_schema,
        }
    return tool  # a hosted tool: all its fields


class _Bound:
    """An upper bound of a request's input tokens, as :func:`input_token_bound` counts
    it (UTF-8 bytes of its JSON, an overhead per message and tool); a tool's spec is
    measured once per run."""

    def __init__(self) -> None:
        self._specs: dict[int, tuple[Any, int]] = {}

    def _spec_bytes(self, tool: Any) -> int:
        found = self._specs.get(id(tool))
        if found is None or found[0] is not tool:
            found = self._specs[id(tool)] = (tool, len(_ENCODE(_tool_spec(tool)).encode()))
        return found[1]

    def __call__(
        self,
        system_instructions: str | None,
        input: Any,
        tools: list[Any],
        output_schema: Any,
        handoffs: list[Any],
        prompt: Any,
    ) -> int:
        messages: list[Any] = []
        if system_instructions:
            messages.append({"role": "system", "content": system_instructions})
        if isinstance(input, str):
            messages.append({"role": "user", "content": input})
        else:
            messages.extend(input)
        if prompt is not None:
            messages.append(prompt)
        if output_schema is not None and not output_schema.is_plain_text():
            messages.append({"output_schema": output_schema.json_schema()})
        specs = [
            {"name": h.tool_name, "description": h.tool_description,
             "parameters": h.input_json_schema}
            for h in handoffs
        ]  # fmt: skip
        body = len(_ENCODE([messages, specs]).encode())
        body += sum(self._spec_bytes(t) + 2 for t in tools)
        count = len(messages) + len(specs) + len(tools)
        return body + PER_MESSAGE_OVERHEAD * count + 16


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
        self._bound = _Bound()
        # The settings last sent, by what they were made from: the clamp is most often the
        # same turn after turn, and ModelSettings is costly to copy.
        self._sent: tuple[ModelSettings | None, int, ModelSettings | None] = (None, 0, None)

    def _priced(self) -> Any:
        """The model's name (or corral.Model) for pricing: ``govern(model=...)``, else the
        name the agent gave, else the SDK model's own ``model`` name."""
        if self._gov.model is not None:
            return self._gov.model
        if self._name:
            return self._name
        own = getattr(self.inner, "model", None)
        return own if isinstance(own, str) and own else type(self.inner).__name__

    def _reserve(self, settings: ModelSettings, bound: int) -> tuple[ModelCall, ModelSettings]:
        gov = self._gov
        gov.model_seen = True
        try:
            mc = gov.run.model_call(
                model=self._priced(), input_tokens=bound, max_tokens=settings.max_tokens
            )
        except Stop as stop:
            raise stopped(stop) from None
        if mc.max_tokens == settings.max_tokens:
            return mc, settings
        base, tokens, sent = self._sent
        if sent is None or tokens != mc.max_tokens or (base is not settings and base != settings):
            sent = dataclasses.replace(settings, max_tokens=mc.max_tokens)
            self._sent = (settings, mc.max_tokens, sent)
        return mc, sent

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
        bound = self._bound(system_instructions, input, tools, output_schema, handoffs, prompt)
        mc, settings = self._reserve(model_settings, bound)
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

    async def stream_response(
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
        bound = self._bound(system_instructions, input, tools, output_schema, handoffs, prompt)
        mc, settings = self._reserve(model_settings, bound)
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
                    if isinstance(event, ResponseCompletedEvent) and event.response.usage:
                        usage = event.response.usage
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
