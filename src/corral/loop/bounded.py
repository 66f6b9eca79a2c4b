"""The bounded agent loop: ``corral.run`` and ``corral.arun``.

>>> import corral
>>> from corral.testing import ScriptedModel, call, final
>>> @corral.tool(name="search.read", effect="read")
... def search(query: str) -> str:
...     return "vendor is down since 09:12"
>>> policy = corral.Policy.from_dict({"tools": {"allow": ["search.read"]}})
>>> model = ScriptedModel([call("search.read", query="vendor status"), final("down since 09:12")])
>>> result = corral.run("vendor status?", model=model, tools=[search], policy=policy, store="memory://")
>>> result.status, result.stop_reason, result.answer, result.usage.tool_calls
('ok', 'ok', 'down since 09:12', 1)

Every turn is a step; each tool call the model asks for passes the gateway in
order, and a stop skips the rest (recorded as skipped). Mistakes the model can
fix (invalid arguments, an unknown tool) are handed back to it a bounded number
of times.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from corral.clock import Clock
from corral.exceptions import ConfigError, Stop, ToolRejected
from corral.gateway.drivers import run_coroutine
from corral.gateway.hygiene import render
from corral.gateway.services import Services
from corral.loop.context import History, policy_prompt
from corral.loop.run import AsyncRun
from corral.models.base import Model
from corral.policy.schema import Policy
from corral.result import RunResult
from corral.secrets import SecretProvider
from corral.stores import Store
from corral.tools import Tool


def replay_notice(key: str | None) -> str:
    """What the model reads before a replayed write's stored result: it did not run now."""
    return (
        f"[replayed: this write already ran earlier in this run (idempotency key {key}); "
        "it was NOT run again. Its recorded result follows.]\n"
    )


class _LoopRun(AsyncRun):
    """The bounded loop's run: it executes every call itself, so it offers no tool that
    the policy alone describes (there is no function to run it)."""

    _describes = False


async def arun(
    task: str,
    *,
    model: Model,
    tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None = None,
    policy: Policy,
    store: str | Store | None = None,
    tenant: str | None = None,
    agent: str | None = None,
    instructions: str | None = None,
    run_id: str | None = None,
    clock: Clock | None = None,
    approver: Callable[..., Any] | None = None,
    credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
    services: Services | None = None,
    max_tokens: int | None = None,
    on_run: Callable[[AsyncRun], None] | None = None,
) -> RunResult:
    """Run ``model`` on ``task`` inside ``policy``; returns a :class:`RunResult` for every
    way the run can end, stops and failures included.

    Raises only for a setup mistake (:class:`~corral.ConfigError`), for cancellation,
    which is re-raised after the run is recorded as ``cancelled``, and for what
    ``on_run`` raises (recorded as ``agent_error``). A store that cannot be opened or
    fails stops the run (``control_plane_unavailable``); anything else unexpected ends
    it ``agent_error`` with the exception's text in ``result.error``: in every case the
    result is returned. ``on_run`` receives the :class:`AsyncRun` as it starts (to cancel
    it from elsewhere, or to read its result after a cancellation). ``max_tokens`` caps
    each model turn's answer (it is clamped further to what the budgets allow).
    ``instructions`` are appended to corral's pinned system prompt (the tools on offer,
    the budgets, tool text is data), and like it never trimmed. ``services`` are the
    parts the run shares with its process (:class:`~corral.Services`; the process's own
    by default).
    """
    return await _governed(
        False,
        task,
        model,
        policy,
        instructions,
        max_tokens,
        on_run,
        tools=tools,
        store=store,
        tenant=tenant,
        agent=agent,
        run_id=run_id,
        clock=clock,
        approver=approver,
        credentials=credentials,
        services=services,
    )


async def _governed(
    owns_loop: bool,
    task: str,
    model: Model,
    policy: Policy,
    instructions: str | None,
    max_tokens: int | None,
    on_run: Callable[[AsyncRun], None] | None,
    **options: Any,
) -> RunResult:
    """:func:`arun`'s body; ``owns_loop``: the event loop is ``corral.run``'s own, which a
    sync tool may hold while it runs (see :func:`corral.gateway.drivers.execute_loop`)."""
    run = _LoopRun(policy, task=task, **options)
    run._owns_loop = owns_loop
    if on_run is not None:
        try:
            on_run(run)
        except BaseException as exc:  # the caller's own code: recorded, then re-raised
            run._exit(exc)
            raise
    try:
        return await _loop(run, model, policy, task, instructions, max_tokens)
    except ConfigError:
        raise
    except Exception:
        # Something the loop did not expect (corral's own loop is the code here, not the
        # caller's): the run ended agent_error, recorded with the exception's text.
        return run.result


async def _loop(
    run: AsyncRun,
    model: Model,
    policy: Policy,
    task: str,
    instructions: str | None,
    max_tokens: int | None,
) -> RunResult:
    core = run._core
    if core.recording is not None:  # what a replay must give the loop again
        core.recording.loop = {"instructions": instructions, "max_tokens": max_tokens}
    async with run:
        offered: list[dict[str, Any]] | None = run.tool_specs("neutral")
        assert offered is not None
        system = policy_prompt(policy, [s["name"] for s in offered], instructions)
        history = History(
            [{"role": "system", "content": system}, {"role": "user", "content": task}]
        )
        max_chars = policy.context.max_chars
        for turn in itertools.count(1):
            # The tools on offer now (the first turn's are those the prompt names).
            specs = run.tool_specs("neutral") if offered is None else offered
            offered = None
            window = history.window(max_chars)
            response = await run._model_turn(
                model, window, specs, max_tokens, history.input_bound(window, specs)
            )
            if not response.tool_calls:
                await run.finish(response.text)
                break
            history.append(
                {
                    "role": "assistant",
                    "content": response.text or "",
                    "tool_calls": [
                        {
                            "id": c.id or f"call_{turn}_{i}",
                            "name": c.name,
                            "arguments": c.arguments
                            if isinstance(c.arguments, str)
                            else json.dumps(c.arguments),
                        }
                        for i, c in enumerate(response.tool_calls)
                    ],
                }
            )
            for i, c in enumerate(response.tool_calls):
                call_id = c.id or f"call_{turn}_{i}"  # unique in the conversation
                try:
                    # A write is keyed by its place in the run (turn and position), not
                    # the provider's id: a resumed run making the same call at the same
                    # point replays it, an identical call in a later turn is a new write.
                    output = await run.call(c.name, c.arguments, call_id=f"turn-{turn}.{i}")
                    observation = render(output)
                    last = core.last_call  # (outcome, tool, idempotency key), as run.last_call
                    if last is not None and last[0] == "replayed":
                        observation = replay_notice(last[2]) + observation
                except ToolRejected as rejected:
                    observation = f"ERROR: {rejected.message}"
                except Stop:
                    skipped = [x.name for x in response.tool_calls[i + 1 :]]
                    if skipped:
                        core.events.add("skipped", tools=skipped)
                    raise
                history.append(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "name": c.name,
                        "content": observation,
                    }
                )
    return run.result


def run(
    task: str,
    *,
    model: Model,
    tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None = None,
    policy: Policy,
    store: str | Store | None = None,
    tenant: str | None = None,
    agent: str | None = None,
    instructions: str | None = None,
    run_id: str | None = None,
    clock: Clock | None = None,
    approver: Callable[..., Any] | None = None,
    credentials: Mapping[str, Mapping[str, str]] | SecretProvider | None = None,
    services: Services | None = None,
    max_tokens: int | None = None,
    on_run: Callable[[AsyncRun], None] | None = None,
) -> RunResult:
    """The synchronous face of :func:`arun` (same arguments, same result).

    It runs on an event loop of its own, which nothing else uses: a sync tool is called
    inline there, bounded by a timer signal as :meth:`Run.call` bounds it, when it can be
    (on the main thread, with no other ``SIGALRM`` handler, and nothing else running on the
    loop); else in a worker thread, as under :func:`arun`.
    """
    result: RunResult = run_coroutine(
        _governed(
            True,
            task,
            model,
            policy,
            instructions,
            max_tokens,
            on_run,
            tools=tools,
            store=store,
            tenant=tenant,
            agent=agent,
            run_id=run_id,
            clock=clock,
            approver=approver,
            credentials=credentials,
            services=services,
        )
    )
    return result
