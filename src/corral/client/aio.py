"""The remote client for async code: :class:`AsyncRun` (see :mod:`corral.client`).

Imports the client's protocol, the tools and the exceptions; httpx.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from corral.client import protocol as p
from corral.client.protocol import RemoteTicket
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.tools import Tool, as_registry


class AsyncRun:
    """:class:`corral.client.Run` for async code: the same methods, awaited, used as
    ``async with`` (``model_call`` is an ``async with`` block). Start it with
    ``await AsyncRun(...).start()`` or ``async with AsyncRun(...) as run``."""

    def __init__(
        self,
        policy: Policy | str | None = None,
        *,
        server: str,
        key: str | None = None,
        tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None = None,
        tenant: str | None = None,
        agent: str | None = None,
        task: str = "",
        timeout: float = p.TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._tools = as_registry(tools)
        self._own_http = http is None
        self._timeout = timeout
        self._http = http or httpx.AsyncClient(base_url=server, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {p.key_of(key)}"}
        self._result: RunResult | None = None
        self._stop: Stop | None = None
        self.id = ""
        self._start = p.start_body(policy, tenant=tenant, agent=agent, task=task)

    async def start(self) -> AsyncRun:
        """Start the run on the server (``async with`` does)."""
        if self.id or self._stop is not None:
            return self
        try:
            self.id = (await self._send("POST", "/v1/runs", self._start))["run_id"]
        except Stop as stop:  # the server cannot be used: the first action says so
            self._stop = stop
        except BaseException:  # refused: a key, a role, a policy (nothing to end)
            await self._close()
            raise
        if not self.id:
            await self._close()
        return self

    # -- the wire -----------------------------------------------------------------------
    async def _send(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                path,
                json=body,
                headers=self._headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            raise p.unavailable(f"cannot reach the server: {type(exc).__name__}: {exc}") from None
        return p.answer_of(response)

    async def _governed(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """A request about the run: its answer if the run goes on; a refusal or the run's
        stop raised (and the stop kept: every later action raises it again)."""
        if self._stop is not None:
            raise self._stop
        if not self.id:
            raise ConfigError("start the run first: `async with` or `await run.start()`")
        try:
            return p.decided(await self._send(method, f"/v1/runs/{self.id}{path}", body, **kw))
        except Stop as stop:
            self._stop = stop
            raise

    async def _close(self) -> None:
        if self._own_http:
            await self._http.aclose()

    # -- the run --------------------------------------------------------------------------
    async def __aenter__(self) -> AsyncRun:
        return await self.start()

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        if self._result is not None:
            return False
        body, suppress, self._stop = p.exit_body(exc, self._stop)
        await self._end(body)
        return suppress

    async def _end(self, body: dict[str, Any]) -> RunResult:
        try:
            if not self.id:
                raise self._stop or p.unavailable("the run never started")
            answer = await self._send("POST", f"/v1/runs/{self.id}/end", body)
            self._result = p.result_of(answer["result"])
        except (Stop, ConfigError) as failed:
            stop = self._stop or (
                failed if isinstance(failed, Stop) else p.unavailable(str(failed))
            )
            self._result = p.unended(self.id, stop)
        finally:
            await self._close()
        return self._result

    @property
    def result(self) -> RunResult:
        """The result, once the run has ended."""
        if self._result is None:
            raise ConfigError("the run has not ended yet: leave the `with` block or call finish()")
        return self._result

    async def step(self) -> None:
        """Count one step of your loop; raises :class:`Stop` when steps or time are used up."""
        await self._governed("POST", "/steps")

    async def finish(self, answer: Any = None) -> RunResult:
        """End the run with ``ok`` and ``answer`` (raises the run's :class:`Stop` if it has one)."""
        if self._stop is not None:
            raise self._stop
        return await self._end({"answer": p.answer_text(answer)})

    # -- tools ----------------------------------------------------------------------------
    async def tool_specs(self, format: str = "openai") -> list[dict[str, Any]]:
        """The tools on offer now, in a model's format (``openai``, ``anthropic``, ``neutral``)."""
        specs: list[dict[str, Any]] = (await self._governed("GET", f"/tools?format={format}"))[
            "tools"
        ]
        return specs

    async def authorize(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> RemoteTicket:
        """Pass the server's gateway up to execution (a write needing approval waits for the
        decision); execute the tool, then :meth:`report` or :meth:`report_failure`."""
        body = p.tool_body(name, args, idempotency_key, call_id)
        answer = await self._governed("POST", "/tool-calls", body, timeout=p.HOLD + self._timeout)
        while (approval := p.pending_of(answer)) is not None:
            await self._send(
                "GET",
                f"/v1/approvals/{approval}/wait?timeout={p.HOLD:g}",
                timeout=p.HOLD + self._timeout,
            )  # decided, or still pending: ask again either way (the server judges)
            answer = await self._governed(
                "POST", "/tool-calls", body, timeout=p.HOLD + self._timeout
            )
        return p.ticket_of(answer)

    async def report(self, ticket: RemoteTicket, output: Any) -> Any:
        """Report what the tool returned; the observation (validated and cleaned)."""
        return await self._report(ticket, p.outcome_body(p.jsonable(output)))

    async def report_failure(
        self, ticket: RemoteTicket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out (ends the run with ``tool_error``)."""
        return await self._report(ticket, p.outcome_body(error=error, timed_out=timed_out))

    async def _report(self, ticket: RemoteTicket, body: dict[str, Any]) -> Any:
        if ticket.replayed:
            return ticket.output
        if ticket.reported:
            raise ConfigError("this ticket was already reported")
        ticket.reported = True
        answer = await self._governed("POST", f"/tool-calls/{ticket.id}/report", body)
        return answer["observation"]

    async def call(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Call one of this run's tools through the server's gateway: authorized there,
        executed here, reported there; the observation. Raises as :meth:`corral.Run.call`."""
        tool = p.local_tool(self._tools, name, async_ok=True)
        ticket = await self.authorize(name, args, idempotency_key=idempotency_key, call_id=call_id)
        if ticket.replayed:
            return ticket.output
        if tool is None:
            raise ConfigError(f"no function for tool {name!r} here: pass it in tools=")
        started = time.monotonic()
        try:
            if tool.is_async:
                pending = tool.fn(**ticket.arguments)
                output = await asyncio.wait_for(pending, ticket.timeout or None)
            else:  # a sync tool runs in a worker thread, never on the event loop
                call = asyncio.to_thread(tool.fn, **ticket.arguments)
                output = await asyncio.wait_for(call, ticket.timeout or None)
        except TimeoutError:
            return await self.report_failure(ticket, p.LATE, timed_out=True)
        except Exception as exc:
            return await self.report_failure(ticket, exc)
        if inspect.isawaitable(output):  # a sync function handing back an awaitable
            output = await output
        if ticket.timeout and time.monotonic() - started > ticket.timeout:
            return await self.report_failure(ticket, p.LATE, timed_out=True)
        return await self.report(ticket, output)

    # -- model calls ----------------------------------------------------------------------
    async def model_call(
        self,
        *,
        model: str,
        messages: Sequence[Mapping[str, Any]] = (),
        tools: Sequence[Mapping[str, Any]] = (),
        max_tokens: int | None = None,
        input_tokens: int | None = None,
        provider: str | None = None,
    ) -> RemoteModelCall:
        """Reserve a model call of your own (a step); use as ``with run.model_call(...) as
        mc:``, send ``mc.max_tokens``, then ``mc.settle``."""
        body = p.model_body(model, messages, tools, max_tokens, input_tokens, provider)
        answer = await self._governed("POST", "/model-calls", body)
        return RemoteModelCall(self, answer["model_call"], int(answer["max_tokens"]))


class RemoteModelCall:
    """A model call reserved on the server (like :class:`corral.ModelCall`), used as
    ``async with``; ``settle`` is awaited."""

    def __init__(self, run: AsyncRun, call_id: str, max_tokens: int) -> None:
        self._run = run
        self._id = call_id
        self.max_tokens = max_tokens
        self._open = True

    async def settle(self, *, input_tokens: int, output_tokens: int) -> None:
        """Charge what the provider reported."""
        await self._settle({"input_tokens": input_tokens, "output_tokens": output_tokens})

    async def _settle(self, body: dict[str, Any]) -> None:
        if not self._open:
            raise ConfigError("this model call was already settled")
        self._open = False
        await self._run._governed("POST", f"/model-calls/{self._id}/settle", body)

    async def __aenter__(self) -> RemoteModelCall:
        return self

    async def __aexit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._open:
            return
        if exc is None:
            await self._settle({})  # usage unknown: the worst case is charged
        elif isinstance(exc, Exception) and not isinstance(exc, Stop | ToolRejected):
            await self._settle({"error": f"{type(exc).__name__}: {exc}"})
