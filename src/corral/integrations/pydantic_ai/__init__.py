"""Pydantic AI agents under corral: one capability, ``Corral``.

>>> from pydantic_ai import Agent                                   # doctest: +SKIP
>>> from corral.integrations.pydantic_ai import Corral               # doctest: +SKIP
>>> agent = Agent(model, tools=[...], capabilities=[Corral(policy)])  # doctest: +SKIP

Each agent run is a corral run, opened when the run first lists its tools and ended with
the agent run. The guards map onto the capability's hooks:

- ``prepare_tools``: the model is offered only what the policy allows now (allowed,
  not kill-switched, not degraded); what it leaves out the framework cannot execute.
- ``before_tool_execute``: ``run.authorize`` — the whole gateway up to execution
  (arguments and constraints, loop detection, approval of writes, budgets, the durable
  idempotency claim). A call served from the read cache or an idempotent replay is not
  executed (``SkipToolExecution``); a denial the model may hear is the framework's own
  ``ToolDenied`` (a refusal it can fix, ``ToolFailed``), never a retry loop.
- ``wrap_tool_execute``: the call's deadline (clamped to what the run has left) and the
  kill switch, looked at every 100 ms while the tool runs.
- ``after_tool_execute`` / ``on_tool_execute_error``: ``run.report`` (the model sees the
  cleaned observation) and ``run.report_failure``.
- ``get_wrapper_model``: each model request is reserved (kill switch, steps, tokens, USD,
  ``max_tokens`` clamped to what the budgets leave) and settled from the usage the model
  reports. corral's USD budget replaces ``UsageLimits.cost_limit``: a model with no known
  price is refused under a USD limit rather than priced at nothing.
- A stop (budget, kill switch, deadline, denial...) ends the agent run with
  :class:`RunStopped`, an ``AgentRunError`` that is also the run's :class:`corral.Stop`.

The authorize and report steps are ``@durable_operation``\\ s (``corral.authorize``,
``corral.report``, ``corral.report_failure``): under a durable engine a replayed run gets
their recorded results back and never charges or audits a call twice; a model request
is already a durable unit, and the wrapper model that reserves it runs inside it.

Without capabilities (or with a run you open yourself), :class:`CorralToolset` and
:class:`CorralModel` wrap the agent's toolset and model around an ``AsyncRun``.

Imports ``corral.loop`` and what is below it; ``pydantic_ai`` is imported here only.
"""

try:
    import pydantic_ai  # noqa: F401
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "corral.integrations.pydantic_ai needs Pydantic AI: pip install 'corral[pydantic-ai]'"
    ) from exc

from corral.integrations.pydantic_ai._capability import Corral
from corral.integrations.pydantic_ai._verdicts import RunStopped
from corral.integrations.pydantic_ai._wrappers import CorralModel, CorralToolset

__all__ = ["Corral", "CorralModel", "CorralToolset", "RunStopped"]
