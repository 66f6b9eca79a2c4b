"""``CorralMiddleware``: a ``langchain.agents.create_agent`` agent under a corral run.

One agent invocation is one corral run, opened at its first model or tool call and ended
after the agent (``after_agent``) with the last answer, or with the run's stop: a stop
(a budget, the kill switch, a denial...) ends the agent in LangChain's idiom — a final
``AIMessage`` and a jump to the end — and is written into the state as ``corral_stop``.
An interrupted agent keeps its run (its id is in the checkpointed state), in this process
or, resumed elsewhere, reopened by id.

Model calls are reserved before and settled after (``run.model_call``): tokens from the
``AIMessage``'s ``usage_metadata``, USD at the model's price, ``max_tokens`` clamped where
the model takes it; tools the run does not offer are taken out of the request. Tool calls
pass the gate of :mod:`corral.integrations.langchain._gate`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ExtendedModelResponse,
    ModelRequest,
    ModelResponse,
    OmitFromInput,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.runtime import Runtime
from langgraph.types import Command

from corral.exceptions import ConfigError, Stop
from corral.gateway.state import new_run_id
from corral.integrations._calls import truncated_stop
from corral.integrations.langchain._gate import (
    Approvals,
    AsyncHandler,
    Handler,
    Interrupts,
    Result,
    agovern,
    govern,
    interrupt_approver,
)
from corral.integrations.langchain._tools import (
    RUN_KEY,
    STOP_KEY,
    core,
    corral_tool,
    face,
    stopped_text,
)
from corral.loop.base import RunBase
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import ModelCall
from corral.models.base import bound_of, json_bytes
from corral.policy.schema import Policy
from corral.stores.base import Store
from corral.tools import Tool


class CorralState(AgentState[Any]):
    """The agent's state with corral's two keys: the id of the invocation's corral run,
    and its stop (``StopInfo.to_dict()``; ``None`` while running and after an ``ok`` end).
    Read the stop back as a :class:`~corral.Stop` with :func:`stop_of`."""

    corral_run_id: NotRequired[Annotated[str | None, OmitFromInput]]
    corral_stop: NotRequired[Annotated[dict[str, Any] | None, OmitFromInput]]


@dataclass(frozen=True, slots=True)
class _ModelFacts:
    name: str
    provider: str | None
    takes_max_tokens: bool
    max_tokens: int | None


def _facts(model: Any) -> _ModelFacts:
    """How corral names and prices a LangChain chat model: LangSmith's own model name and
    provider, else the model's ``model_name`` / ``model``, else its type."""
    try:
        params = model._get_ls_params()
    except Exception:
        params = {}
    name = params.get("ls_model_name")
    for attr in ("model_name", "model"):
        if not isinstance(name, str) or not name:
            name = getattr(model, attr, None)
    if not isinstance(name, str) or not name:
        llm_type = getattr(model, "_llm_type", None)
        name = llm_type if isinstance(llm_type, str) and llm_type else type(model).__name__
    provider = params.get("ls_provider")
    fields = getattr(type(model), "model_fields", {})
    own = getattr(model, "max_tokens", None)
    return _ModelFacts(
        name=name,
        provider=provider if isinstance(provider, str) and provider else None,
        takes_max_tokens="max_tokens" in fields,
        max_tokens=own if type(own) is int and own > 0 else None,
    )


def _tool_name(tool: BaseTool | dict[str, Any]) -> str | None:
    if isinstance(tool, BaseTool):
        return tool.name
    name = tool.get("name") or tool.get("type")
    return name if isinstance(name, str) else None


def _message_bytes(message: BaseMessage) -> int:
    """The JSON bytes of a message as :func:`~corral.models.base.input_token_bound`
    counts them: its role, content and tool calls."""
    shown: dict[str, Any] = {"role": message.type, "content": message.content}
    if isinstance(message, AIMessage) and message.tool_calls:
        shown["tool_calls"] = message.tool_calls
    return json_bytes(shown)


class _Sizes:
    """The bytes of a run's messages, each measured once: a turn's request repeats the
    whole history, and measuring it again at every turn would grow with its square."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[BaseMessage, int]] = {}

    def total(self, messages: Iterable[BaseMessage]) -> int:
        seen = self._seen
        total = 0
        for message in messages:
            found = seen.get(id(message))
            if found is None or found[0] is not message:
                found = seen[id(message)] = (message, _message_bytes(message))
            total += found[1]
        return total


def _answer(state: Mapping[str, Any]) -> str | None:
    for message in reversed(state.get("messages") or ()):
        if isinstance(message, AIMessage):
            text = message.text
            return text if isinstance(text, str) else str(text)
    return None


class CorralMiddleware(AgentMiddleware[CorralState, Any, Any]):
    """Govern a ``create_agent`` agent with corral: each invocation is a corral run.

    >>> import corral
    >>> from corral.integrations.langchain import CorralMiddleware
    >>> policy = corral.Policy.from_dict({"tools": {"allow": ["get_weather"],
    ...     "specs": {"get_weather": {"effect": "read"}}}})
    >>> middleware = CorralMiddleware(policy, store="memory://")
    >>> # create_agent(model, tools=[get_weather], middleware=[middleware])

    - ``policy``, ``store``, ``tenant``, ``agent``, ``credentials``, ``clock`` are those of
      :class:`corral.Run`, for every run this middleware opens.
    - ``approvals``: ``"corral"`` (the default) waits inside the tool call for corral's
      own channel — the store's queue (``corral approvals approve ID`` from anywhere) or
      ``approver=``, a trusted in-process callback — and needs no checkpointer;
      ``"interrupt"`` pauses the graph with LangGraph's ``interrupt()`` (the agent needs a
      checkpointer) and takes the reviewer's decision from ``Command(resume=...)``.
    - ``tools``: the agent's tools, when another middleware before this one changes the
      tools a model request carries (otherwise they are learned from the first request).
    """

    state_schema = CorralState

    def __init__(
        self,
        policy: Policy,
        *,
        store: str | Store | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        approvals: Approvals = "corral",
        approver: Callable[..., Any] | None = None,
        credentials: Any = None,
        clock: Any = None,
        tools: Iterable[BaseTool] | None = None,
    ) -> None:
        if not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a corral.Policy, got {type(policy).__name__}")
        if approvals not in ("corral", "interrupt"):
            raise ConfigError(f"approvals must be 'corral' or 'interrupt', got {approvals!r}")
        if approvals == "interrupt" and approver is not None:
            raise ConfigError(
                "approvals='interrupt' takes the decisions from LangGraph's interrupt(): "
                "give no approver"
            )
        super().__init__()
        self._policy = policy
        self._settings: dict[str, Any] = {
            "store": store,
            "tenant": tenant,
            "agent": agent,
            "credentials": credentials,
            "clock": clock,
            "approver": interrupt_approver if approvals == "interrupt" else approver,
        }
        self._interrupts = Interrupts() if approvals == "interrupt" else None
        self._runs: dict[str, RunBase] = {}
        self._history: dict[str, _Sizes] = {}  # run id -> its messages' sizes
        self._lock = threading.Lock()
        self._known: dict[str, tuple[BaseTool, Tool]] = {}
        self._sizes: dict[str, tuple[Any, int]] = {}  # tool name -> (tool, its spec's bytes)
        self._models: dict[int, tuple[Any, _ModelFacts]] = {}
        self._learn(tools or ())

    # -- runs ----------------------------------------------------------------------------
    def _learn(self, tools: Iterable[Any]) -> None:
        for tool in tools:
            if isinstance(tool, BaseTool):
                known = self._known.get(tool.name)
                if known is None or known[0] is not tool:
                    self._known[tool.name] = (tool, corral_tool(tool))

    def _run(
        self, state: Mapping[str, Any], tools: Callable[[], Iterable[Any]], cls: type[RunBase]
    ) -> RunBase:
        """The invocation's run: open, or opened now with the tools ``tools()`` lists."""
        run_id = state.get(RUN_KEY)
        if not isinstance(run_id, str):
            raise ConfigError(
                "no corral run for this call: CorralMiddleware governs agents built with "
                "create_agent(..., middleware=[CorralMiddleware(...)]); for a ToolNode of "
                "your own use corral.integrations.langchain.ToolGate"
            )
        run = self._runs.get(run_id)
        if run is not None:
            return run
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                self._learn(tools())
                registry = {name: pair[1] for name, pair in self._known.items()}
                # A new id opens a new run; the id of an interrupted run resumed in
                # another process reopens it from the store.
                run = cls(self._policy, tools=registry, run_id=run_id, **self._settings)
                self._runs[run_id] = run
        return run

    def _end(self, run_id: Any, exc: BaseException) -> None:
        """The invocation was cancelled (or interrupted by the user): end its run so."""
        run = self._take({RUN_KEY: run_id})
        if run is not None:
            face(run, Run).__exit__(type(exc), exc, None)

    def _take(self, state: Mapping[str, Any]) -> RunBase | None:
        run_id = state.get(RUN_KEY)
        if not isinstance(run_id, str):
            return None
        self._history.pop(run_id, None)
        return self._runs.pop(run_id, None)

    def _result_update(self, run: RunBase) -> dict[str, Any]:
        stop = run.result.stop
        return {STOP_KEY: None if stop is None else stop.to_dict()}

    # -- the agent's start and end -------------------------------------------------------
    def before_agent(self, state: CorralState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """A new invocation: a new run id (its run opens at the first call)."""
        return {RUN_KEY: new_run_id(), STOP_KEY: None}

    async def abefore_agent(
        self, state: CorralState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """A new invocation: a new run id (its run opens at the first call)."""
        return {RUN_KEY: new_run_id(), STOP_KEY: None}

    def after_agent(self, state: CorralState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        """End the run: ``ok`` with the last answer, or its stop."""
        run = self._take(state)
        if run is None:
            return None
        sync = face(run, Run)
        if core(run).stop is None and not core(run).cancelled:
            sync.finish(_answer(state))
        else:
            sync.__exit__(None, None, None)
        return self._result_update(sync)

    async def aafter_agent(
        self, state: CorralState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        """End the run: ``ok`` with the last answer, or its stop."""
        run = self._take(state)
        if run is None:
            return None
        arun = face(run, AsyncRun)
        if core(run).stop is None and not core(run).cancelled:
            await arun.finish(_answer(state))
        else:
            await arun.__aexit__(None, None, None)
        return self._result_update(arun)

    # -- model calls ---------------------------------------------------------------------
    def _model_facts(self, model: Any) -> _ModelFacts:
        found = self._models.get(id(model))
        if found is not None and found[0] is model:
            return found[1]
        facts = _facts(model)
        self._models[id(model)] = (model, facts)
        return facts

    def _tool_bytes(self, tool: BaseTool | dict[str, Any]) -> int:
        name = _tool_name(tool) or ""
        found = self._sizes.get(name)
        if found is not None and found[0] is tool:
            return found[1]
        if isinstance(tool, BaseTool):
            known = self._known.get(name)
            spec = known[1].spec() if known is not None else {"name": name}
        else:
            spec = tool
        size = json_bytes(spec)
        self._sizes[name] = (tool, size)
        return size

    def _reserve(
        self, run: RunBase, request: ModelRequest[Any]
    ) -> tuple[ModelRequest[Any], ModelCall, _ModelFacts]:
        """Take out the tools the run does not offer, bound the input, reserve the call."""
        offered = {eff.tool.name for _, eff in run._on_offer()}
        tools = [t for t in request.tools if _tool_name(t) in offered]
        messages = request.messages
        if request.system_message is not None:
            messages = [request.system_message, *messages]
        sizes = self._history.get(run.id)
        if sizes is None:
            sizes = self._history[run.id] = _Sizes()
        bound = bound_of(
            sizes.total(messages),
            len(messages),
            sum(map(self._tool_bytes, tools)),
            len(tools),
        )
        facts = self._model_facts(request.model)
        asked = request.model_settings.get("max_tokens")
        wanted = asked if type(asked) is int and asked > 0 else facts.max_tokens
        mc = run.model_call(
            model=facts.name, input_tokens=bound, max_tokens=wanted, provider=facts.provider
        )
        changes: dict[str, Any] = {}
        if len(tools) != len(request.tools):
            changes["tools"] = tools
        if facts.takes_max_tokens and mc.max_tokens != wanted:
            changes["model_settings"] = {**request.model_settings, "max_tokens": mc.max_tokens}
        return (request.override(**changes) if changes else request), mc, facts

    def _settle(self, run: RunBase, mc: ModelCall, response: Any, facts: _ModelFacts) -> None:
        """Settle from the answer's ``usage_metadata`` (none: the reserved worst case is
        charged as the block ends); an answer cut at ``max_tokens`` stops the run."""
        messages = response.result if isinstance(response, ModelResponse) else [response]
        message = next((m for m in messages if isinstance(m, AIMessage)), None)
        if message is None:
            return
        usage = message.usage_metadata
        if usage is not None:
            mc.settle(input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"])
        meta = message.response_metadata or {}
        if meta.get("finish_reason") == "length" or meta.get("stop_reason") == "max_tokens":
            raise truncated_stop(run, facts.name, mc.max_tokens)  # type: ignore[arg-type]

    @staticmethod
    def _stopped(stop: Stop) -> ExtendedModelResponse[Any]:
        """The model's turn once the run has stopped (at this call, or earlier in a tool
        call): no model call, a final answer saying why, the stop in the state and a jump
        to the end — as LangChain's own limit middleware ends an agent."""
        update = {STOP_KEY: stop.info.to_dict(), "jump_to": "end"}
        return ExtendedModelResponse(
            model_response=ModelResponse(result=[AIMessage(content=stopped_text(stop))]),
            command=Command(update=update),
        )

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Reserve the model call, make it, settle it (see the module docstring)."""
        run = face(self._run(request.state, lambda: request.tools, Run), Run)
        bubbled: GraphBubbleUp | None = None
        try:
            request, mc, facts = self._reserve(run, request)
            with mc:
                try:
                    response = handler(request)
                except GraphBubbleUp as exc:  # a pause, not a failure: the worst case is charged
                    bubbled = exc
                else:
                    self._settle(run, mc, response, facts)
        except Stop as stop:
            return self._stopped(stop)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._end(request.state.get(RUN_KEY), exc)
            raise
        if bubbled is not None:
            raise bubbled
        return response

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any] | AIMessage | ExtendedModelResponse[Any]:
        """Reserve the model call, make it, settle it (see the module docstring)."""
        run = face(self._run(request.state, lambda: request.tools, AsyncRun), AsyncRun)
        bubbled: GraphBubbleUp | None = None
        try:
            request, mc, facts = self._reserve(run, request)
            async with mc:
                try:
                    response = await handler(request)
                except GraphBubbleUp as exc:  # a pause, not a failure: the worst case is charged
                    bubbled = exc
                else:
                    self._settle(run, mc, response, facts)
        except Stop as stop:
            return self._stopped(stop)
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, asyncio.CancelledError):
                self._end(request.state.get(RUN_KEY), exc)
            raise
        if bubbled is not None:
            raise bubbled
        return response

    # -- tool calls ----------------------------------------------------------------------
    @staticmethod
    def _tools_of(request: ToolCallRequest) -> Callable[[], list[Any]]:
        def tools() -> list[Any]:
            listed = list(getattr(request.runtime, "tools", None) or ())
            return listed + ([request.tool] if request.tool is not None else [])

        return tools

    def wrap_tool_call(self, request: ToolCallRequest, handler: Handler) -> Result:
        """The call through corral's gateway; a refusal is an error ``ToolMessage``."""
        run = face(self._run(request.state, self._tools_of(request), Run), Run)
        try:
            return govern(run, request, handler, self._interrupts)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._end(request.state.get(RUN_KEY), exc)
            raise

    async def awrap_tool_call(self, request: ToolCallRequest, handler: AsyncHandler) -> Result:
        """The call through corral's gateway; a refusal is an error ``ToolMessage``."""
        run = face(self._run(request.state, self._tools_of(request), AsyncRun), AsyncRun)
        try:
            return await agovern(run, request, handler, self._interrupts)
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, asyncio.CancelledError):
                self._end(request.state.get(RUN_KEY), exc)
            raise
