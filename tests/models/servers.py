"""Local HTTP servers that speak the OpenAI chat-completions and Anthropic Messages protocols.

Each runs a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a thread, checks
every request the way the real API would (a bad request gets the API's 400), logs
it, and answers with the next scripted :class:`Turn` (or ``responder(body)``).
Faults are turns too: an error status with ``Retry-After``, a delay, a raw body.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

WIRE_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")


@dataclass(frozen=True, kw_only=True)
class Turn:
    """One scripted answer. ``usage`` ``None`` estimates it; ``omit_usage`` leaves it out."""

    text: str | None = None
    calls: tuple[tuple[str, Any], ...] = ()
    truncated: bool = False
    usage: tuple[int, int] | None = None
    omit_usage: bool = False
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    delay: float = 0.0
    error: str = "scripted failure"


def text(value: str, *, usage: tuple[int, int] | None = None) -> Turn:
    """A final answer."""
    return Turn(text=value, usage=usage)


def calls(*pairs: tuple[str, Any], text: str | None = None) -> Turn:
    """A turn calling one or more tools, each ``(wire_name, arguments)``."""
    return Turn(calls=tuple(pairs), text=text)


def fail(status: int, *, retry_after: str | None = None, error: str = "try later") -> Turn:
    """An error answer, with a ``Retry-After`` header when given."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Turn(status=status, headers=headers, error=error)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        raw = self.rfile.read(length)
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, owner.error_body("the body is not JSON"), {})
            return
        problem = owner.check(self.path, headers, body)
        with owner.lock:
            owner.requests.append({"path": self.path, "headers": headers, "body": body})
            if problem:
                owner.problems.append(problem)
        if problem:
            self._send(400, owner.error_body(problem), {})
            return
        turn = owner.next_turn(body)
        if turn.delay and owner.release.wait(turn.delay):
            return  # the server is shutting down
        if turn.raw is not None:
            self._send(turn.status, turn.raw, turn.headers)
        elif turn.status != 200:
            self._send(turn.status, owner.error_body(turn.error), turn.headers)
        else:
            payload = owner.render(turn, body, len(raw))
            self._send(200, json.dumps(payload).encode(), turn.headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HTTPServer(ThreadingHTTPServer):
    owner: ProtocolServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is part of the timeout tests


class ProtocolServer:
    """Base: the socket, the thread, the script and the request log."""

    path = "/"

    def __init__(self, script: list[Turn] | None = None) -> None:
        self.script: list[Turn] = list(script or [])
        self.responder: Callable[[dict[str, Any]], Turn] | None = None
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.lock = threading.Lock()
        self.release = threading.Event()
        self._http = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._http.owner = self
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]

    def push(self, *turns: Turn) -> None:
        with self.lock:
            self.script.extend(turns)

    def next_turn(self, body: dict[str, Any]) -> Turn:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        if self.responder is not None:
            return self.responder(body)
        return Turn(status=500, error="the test server has no scripted answer left")

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    # protocol hooks
    def check(self, path: str, headers: dict[str, str], body: Any) -> str: ...
    def render(self, turn: Turn, body: dict[str, Any], size: int) -> dict[str, Any]: ...
    def error_body(self, message: str) -> bytes: ...


def _estimate(turn: Turn, max_tokens: int, size: int) -> tuple[int, int]:
    if turn.usage is not None:
        return turn.usage
    out = len(turn.text or "") + len(json.dumps([a for _, a in turn.calls]))
    return max(1, size // 4), min(max_tokens, max(1, out // 4))


class OpenAIServer(ProtocolServer):
    """``POST /v1/chat/completions``, checked and answered as OpenAI does."""

    path = "/v1/chat/completions"

    def error_body(self, message: str) -> bytes:
        error = {"message": message, "type": "invalid_request_error", "code": None}
        return json.dumps({"error": error}).encode()

    def check(self, path: str, headers: dict[str, str], body: Any) -> str:
        return "; ".join(_openai_problems(path, headers, body))

    def render(self, turn: Turn, body: dict[str, Any], size: int) -> dict[str, Any]:
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        n = len(self.requests)
        tool_calls = [
            {
                "id": f"call_{n}_{i}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for i, (name, args) in enumerate(turn.calls)
        ]
        if turn.truncated:
            for call in tool_calls:
                call["function"]["arguments"] = call["function"]["arguments"][:5]
        message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        finish = "length" if turn.truncated else ("tool_calls" if tool_calls else "stop")
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }
        if not turn.omit_usage:
            tin, tout = _estimate(turn, int(limit), size)
            payload["usage"] = {
                "prompt_tokens": tin,
                "completion_tokens": tout,
                "total_tokens": tin + tout,
            }
        return payload


def _openai_problems(path: str, headers: dict[str, str], body: Any) -> Iterator[str]:
    if path != OpenAIServer.path:
        yield f"unknown path {path}"
    if not isinstance(body, dict):
        yield "the body must be an object"
        return
    if not isinstance(body.get("model"), str):
        yield "model: required"
    if body.get("stream"):
        yield "stream: not supported by this server"
    limits = [k for k in ("max_tokens", "max_completion_tokens") if k in body]
    if len(limits) != 1 or not isinstance(body[limits[0]], int) or body[limits[0]] < 1:
        yield "exactly one of max_tokens or max_completion_tokens, a positive integer"
    for i, tool in enumerate(body.get("tools") or ()):
        fn = tool.get("function", {}) if tool.get("type") == "function" else {}
        if not WIRE_NAME.match(str(fn.get("name", ""))):
            yield f"tools[{i}].function.name: must match ^[a-zA-Z0-9_-]{{1,64}}$"
        if not isinstance(fn.get("parameters"), dict):
            yield f"tools[{i}].function.parameters: required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        yield "messages: a non-empty list"
        return
    pending: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            yield f"messages[{i}].role: unknown {role!r}"
        if role != "tool" and pending:
            yield f"messages[{i}]: tool calls {sorted(pending)} have no tool message"
            pending = set()
        if role == "assistant":
            for call in m.get("tool_calls") or ():
                name = call.get("function", {}).get("name", "")
                if not WIRE_NAME.match(name):
                    yield f"messages[{i}].tool_calls: bad function name {name!r}"
                if not isinstance(call.get("function", {}).get("arguments"), str):
                    yield f"messages[{i}].tool_calls: arguments must be a string"
                pending.add(call.get("id"))
            if m.get("content") is None and not m.get("tool_calls"):
                yield f"messages[{i}]: an assistant message needs content or tool_calls"
        elif role == "tool":
            if m.get("tool_call_id") not in pending:
                yield f"messages[{i}].tool_call_id: answers no pending tool call"
            pending.discard(m.get("tool_call_id"))
            extra = sorted(set(m) - {"role", "tool_call_id", "content"})
            if extra:
                yield f"messages[{i}]: unknown fields {extra}"
        elif not isinstance(m.get("content"), str | list):
            yield f"messages[{i}].content: required"


class AnthropicServer(ProtocolServer):
    """``POST /v1/messages``, checked and answered as Anthropic does."""

    path = "/v1/messages"

    def error_body(self, message: str) -> bytes:
        error = {"type": "invalid_request_error", "message": message}
        return json.dumps({"type": "error", "error": error}).encode()

    def check(self, path: str, headers: dict[str, str], body: Any) -> str:
        return "; ".join(_anthropic_problems(path, headers, body))

    def render(self, turn: Turn, body: dict[str, Any], size: int) -> dict[str, Any]:
        n = len(self.requests)
        content: list[dict[str, Any]] = []
        if turn.text:
            content.append({"type": "text", "text": turn.text})
        if not turn.truncated:
            content.extend(
                {"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args}
                for i, (name, args) in enumerate(turn.calls)
            )
        stop = "max_tokens" if turn.truncated else ("tool_use" if turn.calls else "end_turn")
        payload: dict[str, Any] = {
            "id": f"msg_{n}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if not turn.omit_usage:
            tin, tout = _estimate(turn, int(body["max_tokens"]), size)
            payload["usage"] = {"input_tokens": tin, "output_tokens": tout}
        return payload


def _anthropic_problems(path: str, headers: dict[str, str], body: Any) -> Iterator[str]:
    if path != AnthropicServer.path:
        yield f"unknown path {path}"
    if "anthropic-version" not in headers:
        yield "anthropic-version: header required"
    if not isinstance(body, dict):
        yield "the body must be an object"
        return
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        yield "max_tokens: a positive integer is required"
    if body.get("stream"):
        yield "stream: not supported by this server"
    if "system" in body and not isinstance(body["system"], str | list):
        yield "system: a string or a list of blocks"
    for i, tool in enumerate(body.get("tools") or ()):
        if not WIRE_NAME.match(str(tool.get("name", ""))):
            yield f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        if not isinstance(tool.get("input_schema"), dict):
            yield f"tools.{i}.input_schema: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        yield "messages: at least one message is required"
        return
    previous_uses: set[str] = set()
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("user", "assistant"):
            yield f"messages.{i}.role: must be user or assistant"
        if i == 0 and role != "user":
            yield "messages.0: the first message must use the user role"
        if i and messages[i - 1].get("role") == role:
            yield f"messages.{i}: roles must alternate between user and assistant"
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            yield f"messages.{i}.content: required"
            continue
        uses: set[str] = set()
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if previous_uses - answered:
            yield f"messages.{i}: tool_use ids {sorted(previous_uses - answered)} have no result"
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                yield f"messages.{i}: text content blocks must be non-empty"
            elif kind == "tool_use":
                if role != "assistant":
                    yield f"messages.{i}: tool_use blocks belong to assistant turns"
                if not WIRE_NAME.match(str(block.get("name", ""))):
                    yield f"messages.{i}: bad tool name {block.get('name')!r}"
                if not isinstance(block.get("input"), dict):
                    yield f"messages.{i}: tool_use.input must be an object"
                uses.add(block.get("id"))
            elif kind == "tool_result" and block.get("tool_use_id") not in previous_uses:
                yield f"messages.{i}: tool_result for an unknown tool_use_id"
        previous_uses = uses
