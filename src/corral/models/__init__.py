"""Models: the protocol corral's loop speaks, and pricing."""

from .base import (
    FREE,
    Message,
    Model,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)

__all__ = [
    "FREE",
    "Message",
    "Model",
    "ModelOutputError",
    "ModelRequest",
    "ModelResponse",
    "Price",
    "ToolCallRequest",
]
