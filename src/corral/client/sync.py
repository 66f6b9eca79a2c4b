"""The remote client for synchronous code: :class:`Run` (see :mod:`corral.client`).

Imports the client's protocol, the tools and the exceptions; httpx.
"""

from __future__ import annotations

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


class Run:
    """A governed run whose gateway is a ``corral serve`` (see :mod:`corral.client`):
    ``step``, ``call``, ``authorize`` / ``report`` / ``report_failure``, ``model_call``,
    ``tool_specs``, ``finish``, ``result`` and the ``with`` block behave as
    :class:`corral.Run`'s."""

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
        http: httpx.Client | None = None,
    ) -> None:
        self._tools = as_registry(tools)
        self._own_http = http is None
        self._timeout = timeout
        self._http = http or httpx.Client(base_url=server, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {p.key_of(key)}"}
        self._result: RunResult | None = None
        self._stop: Stop | None = None
        self.id = ""
        body = p.start_body(policy, tenant=tenant, agent=agent, task=task)
        try:
            self.id = self._send("POST", "/v1/runs", body)["run_id"]
        except Stop as stop:  # the server cannot be used: the first action says so
            self._stop = stop
        except BaseException:  # refused: a key, a role, a policy (nothing to end)
            self._close()
            raise
        if not self.id:
            self._close()

    # -- the wire -----------------------------------------------------------------------
    def _send(
        self, method: str, path: str, body: Any = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        try:
            response = self._http.request(
                method,
                path,
                json=body,
                headers=self._headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            raise p.unavailable(f"cannot reach the server: {type(exc).__name__}: {exc}") from None
        return p.answer_of(response)

    def _governed(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """A request about the run: its answer if the run goes on; a refusal or the run's
        stop raised (and the stop kept: every later action raises it again)."""
        if self._stop is not None:
            raise self._stop
        try:
            return p.decided(self._send(method, f"/v1/runs/{self.id}{path}", body, **kw))
        except Stop as stop:
            self._stop = stop
            raise

    def _close(self) -> None:
        if self._own_http:
            self._http.close()

    # -- the run --------------------------------------------------------------------------
    def __enter__(self) -> Run:
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> bool:
        if self._result is not None:
            return False
        body, suppress, self._stop = p.exit_body(exc, self._stop)
        self._end(body)
        return suppress

    def _end(self, body: dict[str, Any]) -> RunResult:
        try:
            if not self.id:
                raise self._stop or p.unavailable("the run never started")
            answer = self._send("POST", f"/v1/runs/{self.id}/end", body)
            self._result = p.result_of(answer["result"])
        except (Stop, ConfigError) as failed:
            stop = self._stop or (
                failed if isinstance(failed, Stop) else p.unavailable(str(failed))
            )
            self._result = p.unended(self.id, stop)
        finally:
            self._close()
        return self._result

    @property
    def result(self) -> RunResult:
        """The result, once the run has ended."""
        if self._result is None:
            raise ConfigError("the run has not ended yet: leave the `with` block or call finish()")
        return self._result

    def step(self) -> None:
        """Count one step of your loop; raises :class:`Stop` when steps or time are used up."""
        self._governed("POST", "/steps")

    def finish(self, answer: Any = None) -> RunResult:
        """End the run with ``ok`` and ``answer`` (raises the run's :class:`Stop` if it has one)."""
        if self._stop is not None:
            raise self._stop
        return self._end({"answer": p.answer_text(answer)})

    # -- tools ----------------------------------------------------------------------------
    def tool_specs(self, format: str = "openai") -> list[dict[str, Any]]:
        """The tools on offer now, in a model's format (``openai``, ``anthropic``, ``neutral``)."""
        specs: list[dict[str, Any]] = self._governed("GET", f"/tools?format={format}")["tools"]
        return specs

    def authorize(
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
        answer = self._governed("POST", "/tool-calls", body, timeout=p.HOLD + self._timeout)
        while (approval := p.pending_of(answer)) is not None:
            self._send(
                "GET",
                f"/v1/approvals/{approval}/wait?timeout={p.HOLD:g}",
                timeout=p.HOLD + self._timeout,
            )  # decided, or still pending: ask again either way (the server judges)
            answer = self._governed("POST", "/tool-calls", body, timeout=p.HOLD + self._timeout)
        return p.ticket_of(answer)

    def report(self, ticket: RemoteTicket, output: Any) -> Any:
        """Report what the tool returned; the observation (validated and cleaned)."""
        return self._report(ticket, p.outcome_body(p.jsonable(output)))

    def report_failure(
        self, ticket: RemoteTicket, error: BaseException, *, timed_out: bool = False
    ) -> Any:
        """Report that the tool raised or timed out (ends the run with ``tool_error``)."""
        return self._report(ticket, p.outcome_body(error=error, timed_out=timed_out))

    def _report(self, ticket: RemoteTicket, body: dict[str, Any]) -> Any:
        if ticket.replayed:
            return ticket.output
        if ticket.reported:
            raise ConfigError("this ticket was already reported")
        ticket.reported = True
        return self._governed("POST", f"/tool-calls/{ticket.id}/report", body)["observation"]

    def call(
        self,
        name: str,
        args: Any = None,
        *,
        idempotency_key: str | None = None,
        call_id: str | None = None,
    ) -> Any:
        """Call one of this run's tools through the server's gateway: authorized there,
        executed here, reported there; the observation. Raises as :meth:`corral.Run.call`."""
        tool = p.local_tool(self._tools, name, async_ok=False)
        ticket = self.authorize(name, args, idempotency_key=idempotency_key, call_id=call_id)
        if ticket.replayed:
            return ticket.output
        if tool is None:
            raise ConfigError(f"no function for tool {name!r} here: pass it in tools=")
        started = time.monotonic()
        try:
            output = tool.fn(**ticket.arguments)
        except Exception as exc:
            return self.report_failure(ticket, exc)
        if ticket.timeout and time.monotonic() - started > ticket.timeout:
            return self.report_failure(ticket, p.LATE, timed_out=True)
        return self.report(ticket, output)

    # -- model calls ----------------------------------------------------------------------
    def model_call(
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
        answer = self._governed("POST", "/model-calls", body)
        return RemoteModelCall(self, answer["model_call"], int(answer["max_tokens"]))


class RemoteModelCall:
    """A model call reserved on the server (like :class:`corral.ModelCall`)."""

    def __init__(self, run: Run, call_id: str, max_tokens: int) -> None:
        self._run = run
        self._id = call_id
        self.max_tokens = max_tokens
        self._open = True

    def settle(self, *, input_tokens: int, output_tokens: int) -> None:
        """Charge what the provider reported."""
        self._settle({"input_tokens": input_tokens, "output_tokens": output_tokens})

    def _settle(self, body: dict[str, Any]) -> None:
        if not self._open:
            raise ConfigError("this model call was already settled")
        self._open = False
        self._run._governed("POST", f"/model-calls/{self._id}/settle", body)

    def __enter__(self) -> RemoteModelCall:
        return self

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        if not self._open:
            return
        if exc is None:
            self._settle({})  # usage unknown: the worst case is charged
        elif isinstance(exc, Exception) and not isinstance(exc, Stop | ToolRejected):
            self._settle({"error": f"{type(exc).__name__}: {exc}"})
