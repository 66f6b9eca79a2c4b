"""corral: a production control layer for tool-calling AI agents.

Every run is bounded, every tool call passes a default-deny gateway, and every
exit has a stop reason.

>>> import corral
>>> corral.Policy.from_dict({}).budgets.max_steps
30
"""

import sys as _sys
import types as _types
import typing as _typing

from corral._public import LazyNames as _LazyNames
from corral._public import present_as as _present_as
from corral._version import __version__
from corral._visible import guard_logs as _guard_logs
from corral.clock import Clock, SystemClock
from corral.exceptions import (
    AccessError,
    ApprovalError,
    ConfigError,
    ControlSignal,
    CorralError,
    Forbidden,
    InvalidKey,
    NotExecuted,
    PolicyError,
    Stop,
    StoreError,
    ToolDefinitionError,
    ToolRejected,
)
from corral.stops import STOP_REASONS, StopInfo, StopReason

if _typing.TYPE_CHECKING:
    from corral.budgets.meter import Charge, Limits, Usage
    from corral.controls.approvals import ApprovalDecision, ApprovalRequest
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
    from corral.replay.result import ReplayResult
    from corral.replay.runner import replay
    from corral.replay.whatif import WhatIf, whatif
    from corral.result import CallInfo, RunResult
    from corral.secrets import EnvSecrets, FileSecrets, SecretProvider
    from corral.stores import Store, open_store
    from corral.tools import Tool, ToolContext, tool

__all__ = [
    "STOP_REASONS",
    "AccessError",
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
    "Forbidden",
    "InvalidKey",
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
    "ReplayResult",
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
    "WhatIf",
    "__version__",
    "arun",
    "load_policy",
    "open_store",
    "replay",
    "run",
    "tool",
    "whatif",
]

# Imported on first use (PEP 562), so ``import corral`` loads neither pydantic, jsonschema nor
# the stores; the TYPE_CHECKING imports above are the same names for type checkers.
_LAZY = {
    "ApprovalDecision": "corral.controls.approvals",
    "ApprovalRequest": "corral.controls.approvals",
    "AsyncRun": "corral.loop.run",
    "CallInfo": "corral.result",
    "Charge": "corral.budgets.meter",
    "EnvSecrets": "corral.secrets",
    "FileSecrets": "corral.secrets",
    "Limits": "corral.budgets.meter",
    "Model": "corral.models.base",
    "ModelCall": "corral.loop.tickets",
    "ModelOutputError": "corral.models.base",
    "ModelRequest": "corral.models.base",
    "ModelResponse": "corral.models.base",
    "Policy": "corral.policy.schema",
    "Price": "corral.models.base",
    "ReplayResult": "corral.replay.result",
    "Run": "corral.loop.run",
    "RunResult": "corral.result",
    "SecretProvider": "corral.secrets",
    "Services": "corral.gateway.services",
    "Store": "corral.stores",
    "Ticket": "corral.loop.tickets",
    "Tool": "corral.tools",
    "ToolCallRequest": "corral.models.base",
    "ToolContext": "corral.tools",
    "Usage": "corral.budgets.meter",
    "WhatIf": "corral.replay.whatif",
    "arun": "corral.loop.bounded",
    "load_policy": "corral.policy.schema",
    "open_store": "corral.stores",
    "replay": "corral.replay.runner",
    "run": "corral.loop.bounded",
    "tool": "corral.tools",
    "whatif": "corral.replay.whatif",
}

# Reprs, tracebacks and pickles say ``corral.Run``, the path users import from: the names
# loaded now are presented now, the others when first resolved.
_present_as("corral", globals(), [name for name in __all__ if name not in _LAZY])
_lazy = _LazyNames("corral", globals(), __all__, _LAZY)

if not _typing.TYPE_CHECKING:  # type checkers see the imports above, not a catch-all __getattr__
    __getattr__ = _lazy.resolve
    __dir__ = _lazy.names

    class _Corral(_types.ModuleType):
        """``corral.replay`` is the function (:func:`corral.replay.runner.replay`), also
        after the package of the same name is imported: importing a package sets it on its
        parent, which this ignores (the package stays in ``sys.modules``)."""

        @property
        def replay(self) -> _typing.Any:
            return _lazy.resolve("replay")

        @replay.setter
        def replay(self, value: _typing.Any) -> None:
            del value  # the package binding itself here: ignored, corral.replay stays the function

    _sys.modules[__name__].__class__ = _Corral

# What corral logs takes text from callers and models (an agent's name, a stop's message):
# shown in the log, never acted on by the terminal that shows it (corral._visible).
_guard_logs("corral", "corral.server")
