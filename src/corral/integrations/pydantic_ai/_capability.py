"""The ``Corral`` capability: each agent run a corral run, through the capability's hooks.

Imports ``pydantic_ai``, ``_governor``, ``_verdicts`` and ``_wrappers``, and corral's
policy, tools, stores and results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import ModelRetry, ToolFailed
from pydantic_ai.messages import ToolCallPart
from pydantic_ai.models import Model
from pydantic_ai.tools import RunContext, ToolDefinition

from corral.exceptions import ConfigError, Stop
from corral.integrations.pydantic_ai._governor import Governor
from corral.integrations.pydantic_ai._verdicts import (
    Report,
    RunStopped,
    Verdict,
    observed,
    raise_verdict,
    stop_of,
    stopped,
)
from corral.integrations.pydantic_ai._wrappers import CorralModel
from corral.loop.run import AsyncRun
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.secrets import SecretProvider
from corral.stores import Store
from corral.tools import Tool

try:  # pydantic-ai-slim >= 2.7x
    from pydantic_ai.capabilities import durable_operation
    from pydantic_ai.durable_exec._capability_operation import (
        durable_operation_dispatch as _dispatch,
    )
except ImportError:  # pragma: no cover - older versions run every hook inline

    def durable_operation(name: str) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda method: method

    def _dispatch(ctx: Any, capability_id: str | None, name: str) -> Any:  # type: ignore[misc]
        return None


class Corral(AbstractCapability[Any]):
    """Govern every run of a Pydantic AI agent with a corral policy.

    ``Agent(model, tools=[...], capabilities=[Corral(policy, store=..., tenant=...,
    agent=...)])``: each agent run is a corral run in ``store`` (the CLI's default store
    when none is given, so ``corral kill`` and ``corral approvals`` reach it). The
    framework's tools are corral tools of the same name (``crm__update`` is the policy's
    ``crm.update``); their effect is the policy's (``tools.specs.<name>.effect``), else a
    write, unless ``tools=`` declares them in code (``corral.tool(fn, effect="read",
    cost_usd=...)``: corral uses the declaration, the framework still runs the function).

    A stop raises :class:`RunStopped` out of ``agent.run``; :meth:`result` gives the
    corral result of a finished agent run.
    """

    id = "corral"

    def __init__(
        self,
        policy: Policy,
        *,
        store: str | Store | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        tools: Iterable[Tool] | Mapping[str, Tool] | None = None,
        approver: Callable[..., Any] | None = None,
        credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
        clock: Any = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a corral.Policy, got {type(policy).__name__}")
        self.policy = policy
        self._options: dict[str, Any] = {
            "store": store,
            "tenant": tenant,
            "agent": agent,
            "approver": approver,
            "credentials": credentials,
            "clock": clock,
        }
        declared = tools.values() if isinstance(tools, Mapping) else (tools or ())
        self._declared = {t.name: t for t in declared}
        self._governor: Governor | None = None
        self._results: dict[str, RunResult] = {}

    # -- per run -------------------------------------------------------------------------
    async def for_run(self, ctx: RunContext[Any]) -> Corral:
        """A fresh instance per agent run: the corral run and its tickets are the run's."""
        fresh = Corral.__new__(Corral)
        fresh.__dict__.update(self.__dict__)  # the results kept are shared with this one
        run_id, task = _corral_run_id(ctx.run_id), _task(ctx.prompt)

        def opener(tools: list[Tool]) -> AsyncRun:
            return AsyncRun(self.policy, tools=tools, run_id=run_id, task=task, **self._options)

        fresh._governor = Governor(self.policy, opener=opener, declared=self._declared)
        return fresh

    def _gov(self) -> Governor:
        if self._governor is None:
            raise ConfigError("Corral's hooks ran outside an agent run")
        return self._governor

    def result(self, run: Any) -> RunResult | None:
        """The corral result of a finished agent run (an ``AgentRunResult``, or its
        ``run_id``); ``None`` when it is not known (not run with this capability, or
        more than 1,000 runs ago)."""
        run_id = run if isinstance(run, str) else getattr(run, "run_id", None)
        return self._results.get(str(run_id))

    async def wrap_run(self, ctx: RunContext[Any], *, handler: Any) -> Any:
        gov = self._gov()
        try:
            result = await handler()
        except BaseException as exc:
            ended = await gov.end(exc)
            if isinstance(exc, RunStopped) and ended is not None:
                exc.result, exc.run_id = ended, ended.run_id
            elif ended is not None and ended.stop_reason not in ("agent_error", "cancelled"):
                raise self._stop_error(ended) from exc  # a stop another exception hid
            raise
        ended = await gov.end(None, getattr(result, "output", None))
        if ended is not None:
            self._keep(ctx.run_id, ended)
            if ended.stop is not None:
                raise self._stop_error(ended)
        return result

    def _stop_error(self, ended: RunResult) -> RunStopped:
        assert ended.stop is not None
        error = RunStopped(Stop.from_info(ended.stop))
        error.run_id = ended.run_id
        error.result = ended
        return error

    def _keep(self, run_id: str | None, result: RunResult) -> None:
        if run_id is None:
            return
        self._results[run_id] = result
        while len(self._results) > 1000:
            del self._results[next(iter(self._results))]

    # -- tools ---------------------------------------------------------------------------
    async def prepare_tools(
        self, ctx: RunContext[Any], tool_defs: list[ToolDefinition]
    ) -> list[ToolDefinition]:
        gov = self._gov()
        await gov.open(tool_defs)
        return gov.offered(tool_defs)

    async def before_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
    ) -> dict[str, Any]:
        if _inline(ctx):
            verdict = await self._gov().authorize(call.tool_name, args, call.tool_call_id)
        else:
            verdict = await self._authorize(ctx, call.tool_name, args, call.tool_call_id)
        raise_verdict(verdict)
        return verdict.arguments

    async def wrap_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        handler: Any,
    ) -> Any:
        gov = self._gov()
        try:
            return await gov.watched(call.tool_call_id, lambda: handler(args))
        except (ModelRetry, ToolFailed) as exc:
            # The tool ran and answered with a failure the model should see: an attempt.
            if _inline(ctx):
                await gov.report(call.tool_call_id, exc.message)
            else:
                await self._report(ctx, call.tool_call_id, exc.message)
            raise

    async def after_tool_execute(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        result: Any,
    ) -> Any:
        if _inline(ctx):
            return observed(await self._gov().report(call.tool_call_id, result))
        return observed(await self._report(ctx, call.tool_call_id, result))

    async def on_tool_execute_error(
        self,
        ctx: RunContext[Any],
        *,
        call: ToolCallPart,
        tool_def: ToolDefinition,
        args: dict[str, Any],
        error: Exception,
    ) -> Any:
        text = f"{type(error).__name__}: {error}"
        if _inline(ctx):
            report = await self._gov().report_failure(call.tool_call_id, text, False)
        else:
            report = await self._report_failure(ctx, call.tool_call_id, text, False)
        if report.stop is not None:
            raise stopped(stop_of(report.stop)) from error
        raise error

    # -- the durable steps: recorded by a durable engine, never run twice on replay ------
    @durable_operation(name="authorize")
    async def _authorize(
        self, ctx: RunContext[Any], tool: str, args: dict[str, Any], call_id: str
    ) -> Verdict:
        return await self._gov().authorize(tool, args, call_id)

    @durable_operation(name="report")
    async def _report(self, ctx: RunContext[Any], call_id: str, output: Any) -> Report:
        return await self._gov().report(call_id, output)

    @durable_operation(name="report_failure")
    async def _report_failure(
        self, ctx: RunContext[Any], call_id: str, error: str, timed_out: bool
    ) -> Report:
        return await self._gov().report_failure(call_id, error, timed_out)

    # -- models --------------------------------------------------------------------------
    def get_wrapper_model(self, model: Model) -> Model | None:
        if self._governor is None:  # the agent's own instance, outside any run
            return None
        return CorralModel(model, governor=self._governor)


def _inline(ctx: RunContext[Any]) -> bool:
    """Whether no durable engine dispatches this run's operations: they are then called
    directly (what ``@durable_operation`` itself would do, without binding its arguments
    for nothing, which cost about 100 µs a call)."""
    return _dispatch(ctx, Corral.id, "authorize") is None


def _corral_run_id(run_id: str | None) -> str | None:
    """The corral run of an agent run: the same id, so a durable replay of the agent run
    (same ``run_id``) resumes its corral run (usage, idempotency keys) instead of a new one."""
    return None if not run_id else f"run_{run_id.replace('-', '')}"


def _task(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt[:1000]
    return ""
