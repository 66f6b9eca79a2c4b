"""What the API answers when it refuses: one JSON shape for every error, the status for
each of corral's own exceptions, and the cap on a request's body.

Imports corral's exceptions; Starlette (through FastAPI) for the responses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from corral.exceptions import (
    ApprovalError,
    ConfigError,
    Forbidden,
    InvalidKey,
    StoreError,
)

#: The largest request body the API reads (bytes); a larger one is refused with 413.
MAX_BODY = 1 << 20
#: The longest a request's body may take to arrive (seconds); then 408.
BODY_SECONDS = 30.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every refusal: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


#: The refusals every ``/v1`` endpoint may answer with, for the OpenAPI document.
REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "the request cannot mean anything (invalid_request)"),
        (401, "no API key, or one corral does not accept (invalid_key)"),
        (403, "the key's role or tenant may not do this (forbidden)"),
        (404, "nothing there, or nothing this key may see (not_found)"),
        (409, "not in the state things are in (a code of its own)"),
        (408, "the body took too long to arrive (too_slow)"),
        (413, "the body is over the cap (too_large)"),
        (422, "the body or a parameter does not fit its schema (invalid_request)"),
        (503, "the store does not answer (control_plane_unavailable)"),
    )
}


class NotFound(Exception):
    """What the API answers for a thing that does not exist, or that the key may not see
    (another tenant's run or approval answers the same: its existence is not told)."""


class Conflict(Exception):
    """A request that cannot be done in the state things are in (409), with its own code:
    ``run_ended``, ``run_not_held``, ``ticket_reported``..."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """The error response: ``{"error": {"code": code, "message": message}}``."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers or None)


#: corral's exceptions as (status, code); the first class that matches wins.
STATUS: tuple[tuple[type[Exception], int, str], ...] = (
    (InvalidKey, 401, "invalid_key"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (ApprovalError, 409, "approval_conflict"),
    (ConfigError, 400, "invalid_request"),
    (StoreError, 503, "control_plane_unavailable"),
)


def answer_for(exc: BaseException) -> JSONResponse | None:
    """The answer to one of corral's exceptions (:data:`STATUS`); None for any other."""
    if isinstance(exc, Conflict):
        return error(409, exc.code, str(exc))
    for kind, status, code in STATUS:
        if isinstance(exc, kind):
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            return error(status, code, str(exc), **extra)
    return None


#: The codes of Starlette's HTTP errors (the rest are ``http_error``).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "too_slow", 413: "too_large"}


def http_answer(exc: HTTPException) -> JSONResponse:
    """The answer to one of Starlette's HTTP errors (``BodyCap``'s 408 and 413 among them)."""
    return error(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))


def install(app: FastAPI) -> None:
    """Answer corral's exceptions, FastAPI's validation errors and Starlette's HTTP
    errors in the one shape."""

    async def corral_error(request: Request, exc: Exception) -> JSONResponse:
        answer = answer_for(exc)
        if answer is None:  # pragma: no cover - registered only for the classes above
            raise exc
        return answer

    for kind, _, _ in STATUS:
        app.add_exception_handler(kind, corral_error)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()[:10]
        ]
        return error(422, "invalid_request", "; ".join(problems) or "invalid request")

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return http_answer(exc)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)


class BodyCap:
    """ASGI middleware: a request whose body is over ``limit`` bytes is refused with 413
    before the endpoint reads it, whether it says its length or streams it; one whose body
    takes over ``seconds`` to arrive (a client trickling it, or gone quiet) with 408."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY, seconds: float = BODY_SECONDS) -> None:
        self.app = app
        self.limit = limit
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.seconds

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: later reads wait for a disconnect, unbounded
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body took over {self.seconds:g} s to arrive"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, f"the request body is over {self.limit} bytes")
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, counted, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error(413, "too_large", f"the request body is over {self.limit} bytes")
        await response(scope, receive, send)
