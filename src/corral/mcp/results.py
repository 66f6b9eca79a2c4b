"""What a client of the proxy is answered: the gateway's output as a tool result, or a
refusal or stop as a tool error result (``isError: true``) with a readable text
(``tool_denied:git.git_reset (not_allowed)``).

Imports the exceptions and the ``mcp`` SDK's types.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import mcp_types as types

from corral.exceptions import Stop

__all__ = ["error", "result", "stop_text", "stopped"]


def stop_text(head: str, why: str | None = None, message: str = "") -> str:
    """What a client is shown for a refused call: ``reason:detail (why): message``."""
    head += f" ({why})" if why else ""
    return f"{head}: {message}" if message else head


def stopped(stop: Stop) -> types.CallToolResult:
    """The error result of a call the run's ``stop`` refused."""
    label, why = str(stop.info), stop.why
    return error(stop_text(label, None if why is None or why in label else why, stop.message))


def error(text: str) -> types.CallToolResult:
    """A tool error result saying ``text``."""
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def result(observed: Any) -> types.CallToolResult:
    """The client's result from what the gateway let through (checked and cleaned)."""
    if isinstance(observed, Mapping) and isinstance(observed.get("content"), list):
        with contextlib.suppress(Exception):
            return types.CallToolResult.model_validate(dict(observed))
    text = observed if isinstance(observed, str) else repr(observed)
    return types.CallToolResult(content=[types.TextContent(text=text)])
