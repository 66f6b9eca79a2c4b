"""corral: a production control layer for tool-calling AI agents.

Every run is bounded, every tool call passes a default-deny gateway, and every
exit has a stop reason.

>>> import corral
>>> corral.Policy.from_dict({}).budgets.max_steps
30
"""

from corral._version import __version__
from corral.budgets.meter import Charge, Limits, Usage
from corral.clock import Clock, SystemClock
from corral.controls.approvals import ApprovalDecision, ApprovalRequest
from corral.exceptions import (
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
from corral.gateway.services import Services
from corral.loop.bounded import arun, run
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import ModelCall, Ticket
from corral.models.base import (
    Model,
    ModelOutputError,
    ModelRequest,
    ModelResponse,
    Price,
    ToolCallRequest,
)
from corral.policy.schema import Policy, load_policy
from corral.result import CallInfo, RunResult
from corral.secrets import EnvSecrets, FileSecrets, SecretProvider
from corral.stops import STOP_REASONS, StopInfo, StopReason
from corral.stores import Store, open_store
from corral.tools import Tool, ToolContext, tool

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
    "Services",
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
