"""Without capabilities: a model and a toolset around a corral run you opened yourself
(:class:`CorralModel`, :class:`CorralToolset`).

Imports ``pydantic_ai``, ``_governor`` and ``_verdicts``, and ``corral.loop``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from pydantic_ai.exceptions import ModelRetry, ToolFailed
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models import Model, ModelRequestParameters, StreamedResponse
from pydantic_ai.models.wrapper import WrapperModel
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import RunContext, ToolDenied
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from corral.exceptions import ConfigError
from corral.integrations.pydantic_ai._governor import Governor
from corral.integrations.pydantic_ai._verdicts import (
    RunStopped,
    observed,
    raise_verdict,
    stop_of,
    stopped,
)
from corral.loop.run import AsyncRun
from corral.tools import Tool


class CorralModel(WrapperModel):
    """A model whose every request is reserved and settled in a corral run: kill switch,
    steps, tokens and USD before it (``max_tokens`` clamped), the reported usage after.

    ``CorralModel(model, run)`` around an ``AsyncRun`` you opened; :class:`Corral` uses it
    for each agent run by itself.
    """

    def __init__(
        self,
        wrapped: Model | str,
        run: AsyncRun | None = None,
        *,
        governor: Governor | None = None,
    ) -> None:
        super().__init__(wrapped)
        if governor is None:
            if run is None:
                raise ConfigError("CorralModel needs the corral run: CorralModel(model, run)")
            governor = Governor(run._core.policy, run)
        self.governor = governor

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        gov = self.governor
        async with gov.model_call(
            self.wrapped, messages, model_settings, model_request_parameters
        ) as (settings, settle):
            response = await self.wrapped.request(messages, settings, model_request_parameters)
            settle(response.usage)
        return response

    @contextlib.asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        gov = self.governor
        async with gov.model_call(
            self.wrapped, messages, model_settings, model_request_parameters
        ) as (settings, settle):
            async with self.wrapped.request_stream(
                messages, settings, model_request_parameters, run_context
            ) as stream:
                yield stream
            usage = stream.usage  # a property in recent versions, a method before
            settle(usage() if callable(usage) else usage)


class CorralToolset(WrapperToolset[Any]):
    """A toolset whose calls pass corral's gateway, for a run you opened yourself.

    ``CorralToolset(toolset, run)``: the model is offered what the policy allows; each
    call is authorized before it runs (approval, budgets, idempotency), reported after,
    and watched for the kill switch and its deadline while it runs. A stop raises
    :class:`RunStopped`, which ``async with run`` records as the run's stop. Tools the run
    was not given are described from their definitions (effect from the policy).
    """

    def __init__(
        self,
        wrapped: AbstractToolset[Any],
        run: AsyncRun,
        *,
        tools: Iterable[Tool] | None = None,
    ) -> None:
        super().__init__(wrapped)
        declared = {t.name: t for t in tools or ()}
        self.governor = Governor(run._core.policy, run, declared=declared)

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        tools = await super().get_tools(ctx)
        gov = self.governor
        defs = [tool.tool_def for tool in tools.values()]
        await gov.open(defs)
        keep = {t.name for t in gov.offered(defs)}
        return {name: tool for name, tool in tools.items() if name in keep}

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        gov = self.governor
        call_id = ctx.tool_call_id or f"{name}-{id(tool_args)}"
        verdict = await gov.authorize(name, tool_args, call_id)
        if verdict.kind == "replayed":
            return verdict.output
        if verdict.kind == "denied":
            return ToolDenied(verdict.message)
        raise_verdict(verdict)
        try:
            output = await gov.watched(
                call_id,
                lambda: super(CorralToolset, self).call_tool(name, verdict.arguments, ctx, tool),
            )
        except RunStopped:
            raise
        except (ModelRetry, ToolFailed) as exc:
            await gov.report(call_id, exc.message)
            raise
        except Exception as exc:
            report = await gov.report_failure(call_id, f"{type(exc).__name__}: {exc}", False)
            if report.stop is not None:
                raise stopped(stop_of(report.stop)) from exc
            raise
        return observed(await gov.report(call_id, output))
