"""corral: a production control layer for tool-calling AI agents.

Every run is bounded, every tool call passes a default-deny gateway, and every
exit has a stop reason.

>>> import corral
>>> corral.Policy.from_dict({}).budgets.max_steps
30
"""

from .budgets import Charge, Limits, Usage
from .clock import Clock, SystemClock
from .delegated import ModelCall, Ticket
from .exceptions import (
    ApprovalError,
    ConfigError,
    ControlSignal,
    CorralError,
    NotExecuted,
    PolicyError,
    Stop,
    StoreError,
    ToolDefinitionError,
    ToolRejected,
)
from .governed import AsyncRun, Run
from .guards.approval import ApprovalDecision, ApprovalRequest
from .loop import arun, run
from .models.base import (
    Model,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)
from .policy import Policy, load_policy
from .result import CallInfo, RunResult
from .secrets import EnvSecrets, FileSecrets, SecretProvider
from .stops import STOP_REASONS, StopInfo, StopReason
from .stores import Store, open_store
from .tools import Tool, ToolContext, tool

__version__ = "0.1.0"

__all__ = [
    "STOP_REASONS",
    "ApprovalDecision",
    "ApprovalError",
    "ApprovalRequest",
    "AsyncRun",
    "CallInfo",
    "Charge",
    "Clock",
    "ConfigError",
    "ControlSignal",
    "CorralError",
    "EnvSecrets",
    "FileSecrets",
    "Limits",
    "Model",
    "ModelCall",
    "ModelOutputError",
    "ModelRequest",
    "ModelResponse",
    "NotExecuted",
    "Policy",
    "PolicyError",
    "Price",
    "Run",
    "RunResult",
    "SecretProvider",
    "Stop",
    "StopInfo",
    "StopReason",
    "Store",
    "StoreError",
    "SystemClock",
    "Ticket",
    "Tool",
    "ToolCallRequest",
    "ToolContext",
    "ToolDefinitionError",
    "ToolRejected",
    "Usage",
    "__version__",
    "arun",
    "load_policy",
    "open_store",
    "run",
    "tool",
]
