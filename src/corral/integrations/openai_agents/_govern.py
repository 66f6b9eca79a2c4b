"""What one governed run keeps for the SDK's side: the corral run, how approvals are asked,
the model's name for pricing, and the write calls waiting for a decision.

One :class:`Governor` per corral run (:func:`governor`), shared by :func:`govern`'s agents
and :func:`run_config`'s model provider. It reaches into the run's state (``run._core``)
for what ``Run`` offers no public face for: the policy as applied to one tool
(``effective``), the allowlist, the store of the approval queue.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from corral.controls.approvals import ApprovalRequest
from corral.exceptions import ConfigError, ToolRejected
from corral.loop.base import RunBase
from corral.loop.run import AsyncRun, Run
from corral.loop.tickets import Ticket
from corral.models.base import Model as CorralModel
from corral.policy.schema import TOOL_NAME

if TYPE_CHECKING:
    from corral.gateway.state import RunState

Approvals = Literal["interrupt", "wait"]
_APPROVALS = ("interrupt", "wait")

#: Who approved or denied a call through the SDK's ``RunState.approve`` / ``reject``, as
#: the approval queue and the audit log record it.
SDK_APPROVER = "openai-agents:RunState"


def corral_name(sdk_name: str) -> str:
    """The corral tool name behind an SDK tool name: ``__`` stands for ``.`` (the SDK
    accepts ``[a-zA-Z0-9_-]`` only), so ``crm__update`` is ``crm.update``."""
    return sdk_name.replace("__", ".")


def valid_name(name: str) -> bool:
    return bool(TOOL_NAME.match(name))


@dataclass(slots=True)
class Pending:
    """A write call the SDK was told needs approval, waiting for a decision."""

    approval_id: str
    sdk_tool: str
    request: ApprovalRequest


class Governor:
    """The SDK's view of one corral run."""

    def __init__(self, run: Run | AsyncRun) -> None:
        self.run = run
        self.core: RunState = run._core
        self.is_async = isinstance(run, AsyncRun)
        self.approvals: Approvals = "interrupt"
        self.model: str | CorralModel | None = None
        self.pending: dict[str, Pending] = {}
        #: Whether a model call of this run went through a governed model: a tool call
        #: before any means the model the SDK used was not governed (no run_config).
        self.model_seen = False
        self.agents: dict[int, Any] = {}  # id(original agent) -> governed agent
        self.keep: list[Any] = []  # the originals, so that their ids stay theirs

    # -- the run's split, sync or async ------------------------------------------------
    async def authorize(self, name: str, args: Any, call_id: str | None) -> Ticket:
        run = self.run
        if isinstance(run, AsyncRun):
            return await run.authorize(name, args, call_id=call_id)
        return run.authorize(name, args, call_id=call_id)

    def report(self, ticket: Ticket, output: Any) -> Any:
        # Run.report and AsyncRun.report are the same synchronous step (the async one
        # only awaits nothing): called directly, one coroutine fewer per call.
        return Run.report(self.run, ticket, output)  # type: ignore[arg-type]

    def report_failure(self, ticket: Ticket, error: BaseException, *, timed_out: bool) -> Any:
        return Run.report_failure(self.run, ticket, error, timed_out=timed_out)  # type: ignore[arg-type]

    # -- what the policy offers --------------------------------------------------------
    def allowed(self, name: str) -> bool:
        """Whether the policy allows ``name`` and the run has a tool of that name."""
        core = self.core
        return name in core.allowed and name in core.tools

    def interrupts(self, name: str) -> bool:
        """Whether calls of ``name`` ask for approval through the SDK's interruption."""
        core = self.core
        if self.approvals != "interrupt" or core.approver is not None:
            return False  # the in-process approver answers inside the call
        if not self.allowed(name) or core.observes("approvals"):
            return False
        return core.effective(name).require_approval


_GOVERNORS: weakref.WeakKeyDictionary[RunBase, Governor] = weakref.WeakKeyDictionary()


def governor(run: Any) -> Governor:
    """The governor of ``run`` (made on first use)."""
    if not isinstance(run, Run | AsyncRun):
        raise ConfigError(
            f"run must be a corral.Run or corral.AsyncRun governed here, got {type(run).__name__}"
        )
    found = _GOVERNORS.get(run)
    if found is None:
        found = _GOVERNORS[run] = Governor(run)
    return found


def configure(
    gov: Governor, approvals: Any, model: Any, approvals_given: bool, model_given: bool
) -> None:
    if approvals_given:
        if approvals not in _APPROVALS:
            raise ConfigError(f"approvals must be 'interrupt' or 'wait', got {approvals!r}")
        gov.approvals = approvals
    if model_given:
        if model is not None and not isinstance(model, str | CorralModel):
            raise ConfigError(
                f"model must be a model name or a corral.Model, got {type(model).__name__}"
            )
        gov.model = model


def told(rejected: ToolRejected) -> str:
    """What the model is shown for a call corral refused but the run goes on."""
    return rejected.message
