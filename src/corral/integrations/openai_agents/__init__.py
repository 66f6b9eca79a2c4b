"""The OpenAI Agents SDK (``openai-agents``) under corral, through the SDK's own extension
points: an existing agent is governed by a few added lines.

    import corral
    from corral.integrations.openai_agents import govern, run_config, tools_of

    async with corral.AsyncRun(policy, tools=tools_of(agent)) as run:
        result = await Runner.run(govern(agent, run), "question", run_config=run_config(run))
        await run.finish(result.final_output)
    print(run.result.stop_reason)

- :func:`tools_of`: the corral side of the agent's function tools, for the run;
- :func:`govern`: the agent with its function tools passing corral's gateway
  (``run.authorize`` → the tool → ``run.report``), those the policy does not offer left
  out (``is_enabled``), writes asking for approval through the SDK's interruption
  (``needs_approval``), its model (a ``Model`` object) and its handoffs' agents governed;
- :func:`run_config`: a ``RunConfig`` whose model provider reserves and settles each
  model call in the run (tokens, USD, the ``max_tokens`` clamp, the kill switch);
- :func:`wait_for_decisions`: wait for ``corral approvals`` to decide the run's
  interruptions and get the SDK state to resume with;
- :class:`RunStopped`: what ``Runner.run`` raises when corral stops the run — the SDK's
  own ``AgentsException``, and the run's :class:`corral.Stop`.

Imports the SDK at its top (``pip install 'corral[openai-agents]'``); nothing else in
corral imports this package. Sits above ``corral.loop``.
"""

from __future__ import annotations

try:
    import agents  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover - the extra is installed in CI
    raise ModuleNotFoundError(
        "corral.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'corral[openai-agents]'",
        name=exc.name,
    ) from exc

import dataclasses
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig
from agents.models.interface import Model

from corral.exceptions import ConfigError
from corral.integrations.openai_agents._approvals import wait_for_decisions
from corral.integrations.openai_agents._govern import (
    SDK_APPROVER,
    Approvals,
    configure,
    corral_name,
    governor,
)
from corral.integrations.openai_agents._models import GovernedModel, GovernedProvider
from corral.integrations.openai_agents._stop import RunStopped
from corral.integrations.openai_agents._tools import (
    governed_handoff,
    governed_tool,
    hosted_allowed,
    tools_of,
)
from corral.loop.run import AsyncRun, Run
from corral.models.base import Model as CorralModel

__all__ = [
    "SDK_APPROVER",
    "GovernedModel",
    "GovernedProvider",
    "RunStopped",
    "corral_name",
    "govern",
    "run_config",
    "tools_of",
    "wait_for_decisions",
]

_UNSET: Any = object()


def govern(
    agent: Agent[Any],
    run: Run | AsyncRun,
    *,
    approvals: Approvals = _UNSET,
    model: str | CorralModel | None = _UNSET,
) -> Agent[Any]:
    """``agent`` governed by ``run`` (a clone: ``agent`` itself is left as it was).

    - Its function tools become new ``FunctionTool`` objects that pass corral's gateway:
      ``run.authorize`` (kill switch, allowlist, arguments and constraints, degrade state,
      loop detection, budgets, a write's idempotency claim) → the tool's own invoker →
      ``run.report`` (output checks and hygiene, settlement) or ``run.report_failure``
      (the run stops with ``tool_error``). A call corral refuses but the run survives
      (invalid arguments, ``on_denied: tell_model``) reaches the model as the tool's
      output; a stop ends ``Runner.run`` with :class:`RunStopped`.
    - Tools the policy does not offer now (not allowed, kill-switched, degraded) are left
      out of what the model is offered (``is_enabled``); other tools (hosted tools) are
      kept only when the policy allows their name.
    - ``approvals="interrupt"`` (the default): a write that needs approval interrupts the
      run the SDK's way (``needs_approval``; ``result.interruptions``), its request filed
      in corral's queue; decide it with ``RunState.approve`` / ``reject`` or with
      ``corral approvals`` (then :func:`wait_for_decisions`). ``approvals="wait"``: the
      call waits inside the tool for corral's queue, as ``run.authorize`` does (the run
      never interrupts). A run given an in-process ``approver=`` always asks it inside
      the call.
    - A model given as a ``Model`` object is wrapped (:class:`GovernedModel`); a model
      given by name is governed through :func:`run_config`'s provider. ``model`` names
      the model for pricing (``models.prices.<name>``) or is a :class:`corral.Model`
      (its price), when the SDK's name is not the one the policy prices.
    - The agents it hands off to are governed too, by the same run.
    """
    gov = governor(run)
    configure(gov, approvals, model, approvals is not _UNSET, model is not _UNSET)
    if not isinstance(agent, Agent):
        raise ConfigError(f"govern() takes an agents.Agent, got {type(agent).__name__}")
    if getattr(agent, "mcp_servers", None):
        raise ConfigError(
            f"agent {agent.name!r} has MCP servers, which govern() does not cover yet: put "
            "`corral mcp` in front of each server (see docs/mcp.md) and give the agent that"
        )

    def one(a: Any) -> Any:
        if not isinstance(a, Agent):
            return a  # another kind of agent: left to the SDK
        found = gov.agents.get(id(a))
        if found is not None:
            return found
        tools = [governed_tool(gov, t) for t in a.tools if isinstance(t, FunctionTool)]
        hosted = hosted_allowed(gov, [t for t in a.tools if not isinstance(t, FunctionTool)])
        model_ = a.model
        if isinstance(model_, Model) and not isinstance(model_, GovernedModel):
            model_ = GovernedModel(model_, gov, None)
        clone = _clone(a, tools=[*tools, *hosted], model=model_, handoffs=[])
        gov.agents[id(a)] = clone
        gov.keep.append(a)
        clone.handoffs = [
            governed_handoff(gov, h, one) if isinstance(h, Handoff) else one(h) for h in a.handoffs
        ]
        return clone

    return one(agent)  # type: ignore[no-any-return]


def _clone(agent: Agent[Any], **changes: Any) -> Agent[Any]:
    """``agent.clone(**changes)``; for an ``Agent`` itself (not a subclass, whose own
    ``__post_init__`` may do more), a shallow copy with the changes, as ``clone`` makes
    it, without validating again fields that ``agent`` passed already: the SDK's checks
    and its model-settings defaults, re-derived (a deep copy) cost most of governing an
    agent, once per run. The changes are corral's own (tools, a ``Model`` object for a
    ``Model`` object, handoffs), so the settings the SDK would derive are those ``agent``
    holds."""
    if type(agent) is not Agent:
        return agent.clone(**changes)
    new = object.__new__(Agent)
    new.__dict__.update(agent.__dict__)
    new.__dict__.update(changes)
    return new


def run_config(run: Run | AsyncRun, base: RunConfig | None = None) -> RunConfig:
    """``base`` (default ``RunConfig()``) with each model call governed by ``run``: its
    ``model_provider`` wrapped (:class:`GovernedProvider`), and its ``model`` when it is
    a ``Model`` object. Pass it to ``Runner.run(..., run_config=...)``."""
    gov = governor(run)
    base = RunConfig() if base is None else base
    model = base.model
    if isinstance(model, Model) and not isinstance(model, GovernedModel):
        model = GovernedModel(model, gov, None)
    provider = base.model_provider
    if not isinstance(provider, GovernedProvider):
        provider = GovernedProvider(provider, gov)
    return dataclasses.replace(base, model=model, model_provider=provider)
