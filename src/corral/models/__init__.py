"""Models: the protocol corral's loop speaks, the adapters for real endpoints, and pricing.

The adapters are imported on first use (``corral.models.OpenAIModel``, or
``from corral.models.openai import OpenAIModel``), so ``import corral`` stays light.

- ``base``: the protocol (request, response, price), usage checks, a request's input-token
  bound and a tool's name on the wire;
- ``openai`` / ``anthropic``: the adapters; ``pricing``: the genai-prices table;
- ``_http``: the pooled client and retries; ``_wire``: what both adapters share.

Imports only the top-level modules: nothing of the loop, the gateway, the controls or the
budgets. The helpers for your own SDK calls, which need a run, are in ``corral.integrations``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from corral.models.base import (
    FREE,
    MAX_CALL_TOKENS,
    InvalidUsage,
    Message,
    Model,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
    usage_problem,
)

if TYPE_CHECKING:
    from corral.models._http import ModelAPIError, RetryBudget, RetryPolicy
    from corral.models.anthropic import AnthropicModel
    from corral.models.openai import OpenAIModel

__all__ = [
    "FREE",
    "MAX_CALL_TOKENS",
    "AnthropicModel",
    "InvalidUsage",
    "Message",
    "Model",
    "ModelAPIError",
    "ModelOutputError",
    "ModelRequest",
    "ModelResponse",
    "OpenAIModel",
    "Price",
    "RetryBudget",
    "RetryPolicy",
    "ToolCallRequest",
    "usage_problem",
]

_LAZY = {
    "AnthropicModel": ".anthropic",
    "ModelAPIError": "._http",
    "OpenAIModel": ".openai",
    "RetryBudget": "._http",
    "RetryPolicy": "._http",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
