"""The runs a server drives for agents that reach it over HTTP: each an
:class:`~corral.AsyncRun` held by this process from its start to its end, with the tickets
of the tool calls it authorized and the model calls it reserved, by id.

A run is held where it started. Its shared state — budgets across runs, the kill switch,
approvals, idempotency claims, the audit chain — is in the store, where every replica and
process sees it; its own counters (steps, tool calls, tokens, the loop detector, the read
cache) are in this process. Its record names the address of the server holding it
(``served_by``): behind several replicas, a request reaching another one is relayed to the
holder, and a run whose holder is gone is taken over (:mod:`corral.server.relay`). A server
with no address (``address=None``: one replica) answers a request for a run it does not hold
``run_not_held`` (409). A run left without a request for ``idle_seconds`` is ended as
``cancelled``, and so is every held run when the server stops; the sweeper renews the
heartbeat of the runs held here meanwhile (a write renews it too), so that other replicas
can tell a quiet holder from a dead one.

Imports the loop (``AsyncRun``), the policy, the keys and the stores.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from starlette.concurrency import run_in_threadpool

from corral.controls.keys import Action, Principal, check, permits
from corral.exceptions import ConfigError, Stop
from corral.loop.run import AsyncRun
from corral.loop.tickets import ModelCall, Ticket
from corral.policy.schema import Policy, load_policy
from corral.result import RunResult
from corral.secrets import SecretProvider
from corral.server.errors import Conflict, NotFound
from corral.stores.base import RunRecord, Store

log = logging.getLogger("corral.server")

#: How long a held run may go without a request before it is ended as cancelled (seconds).
IDLE_SECONDS = 3600.0
#: The most runs one process holds at once; a start past it is refused (503).
MAX_RUNS = 10_000
#: The most open tickets and model calls one run holds at once.
MAX_OPEN = 1000


def load_policies(folder: str | Path | None) -> dict[str, Policy]:
    """The named policies of ``folder``: every ``*.yaml`` / ``*.yml`` file, by its stem;
    an invalid one raises :class:`~corral.exceptions.PolicyError` naming its file."""
    if folder is None:
        return {}
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--policy-dir {str(root)!r} is not a directory")
    found: dict[str, Policy] = {}
    for path in sorted([*root.glob("*.yaml"), *root.glob("*.yml")]):
        if path.stem in found:
            raise ConfigError(f"two policies are named {path.stem!r} in {root}")
        found[path.stem] = load_policy(path)
    return found


@dataclass(eq=False)
class Held:
    """One run this process drives, and what it has open."""

    run: AsyncRun
    tenant: str | None
    tickets: dict[str, Ticket] = field(default_factory=dict)
    # Authorizations still on their way (waiting for an approval), by the call's identity.
    inflight: dict[str, asyncio.Task[dict[str, Any]]] = field(default_factory=dict)
    model_calls: dict[str, ModelCall] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)
    result: RunResult | None = None


class Runs:
    """The runs of one server process (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        policies: Mapping[str, Policy] | None = None,
        *,
        idle_seconds: float = IDLE_SECONDS,
        max_runs: int = MAX_RUNS,
        secrets: SecretProvider | None = None,
        address: str | None = None,
    ) -> None:
        self.store = store
        self.address = address  # where other replicas reach this one (None: one replica)
        self.secrets = secrets  # the tools' credentials, resolved here, for executors only
        self.policies = dict(policies or {})
        self.idle_seconds = idle_seconds
        self.max_runs = max_runs
        self._held: dict[str, Held] = {}
        # The latest ended runs, for a late request: their tenant and result.
        self._ended: dict[str, tuple[str | None, RunResult]] = {}
        # Runs being taken over here, so that two requests for one take it over once.
        self._taking: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._held)

    # -- start ----------------------------------------------------------------------------
    def policy(
        self, who: Principal, named: str | None, inline: Any, *, digest: str | None = None
    ) -> Policy:
        """The policy a run starts under: a named one of the policy folder (by its name, or
        by its digest: the remote client sends the digest of the policy it was given), or
        (an admin's key only: a policy is what bounds an agent) one given inline."""
        if digest is not None:
            found = self._policy_with(digest)
            if found is not None:
                return found
            raise ConfigError(
                f"the server has no policy with digest {digest[:16]}...: put the policy file "
                "in its --policy-dir, or name one of its policies"
            )
        if inline is not None:
            if who.role != "admin":
                raise ConfigError("only an admin key may start a run under an inline policy")
            return Policy.from_dict(inline, source="the request")
        if named is None:
            if "default" in self.policies:
                return self.policies["default"]
            raise ConfigError("name a policy (the server has no policy named 'default')")
        found = self.policies.get(named)
        if found is None:
            known = ", ".join(sorted(self.policies)) or "none: start the server with --policy-dir"
            raise ConfigError(f"no policy named {named!r} (known: {known})")
        return found

    def start(
        self, who: Principal, policy: Policy, *, tenant: str | None, agent: str | None, task: str
    ) -> Held:
        """A new run of ``tenant`` (a tenant key's own when not given), held here."""
        tenant = who.tenant if tenant is None else tenant
        check(who, Action.RUN_START, tenant)
        if len(self._held) >= self.max_runs:
            raise Conflict("server_busy", f"this server holds {self.max_runs} runs already")
        run = AsyncRun(
            policy,
            store=self.store,
            tenant=tenant,
            agent=agent,
            task=task,
            credentials=self.secrets,
        )
        held = self._held[run.id] = Held(run, tenant)
        if self.address is not None:
            self.store.take_run(run.id, was=None, now=self.address)  # its holder: here
        return held

    # -- take-over ------------------------------------------------------------------------
    def holds(self, run_id: str) -> bool:
        """Whether this process holds ``run_id``, or ended it lately."""
        return run_id in self._held or run_id in self._ended

    async def take_over(self, record: RunRecord, address: str) -> Held | None:
        """Hold the run ``record`` describes here, resumed from the store, if this server
        wins it from the holder the record names; None when another server took it first.
        Refused (``run_not_held``) for a run under a policy this server does not have."""
        lock = self._taking.setdefault(record.id, asyncio.Lock())
        async with lock:
            try:
                held = self._held.get(record.id)
                if held is not None:
                    return held
                policy = self._policy_with(record.policy_digest)
                if policy is None:
                    raise Conflict(
                        "run_not_held",
                        f"run {record.id!r} was held by {record.served_by}, which is gone; "
                        f"this server has no policy with its digest ({record.policy_digest[:16]}) "
                        "to go on with it: give every replica the same --policy-dir",
                    )
                if len(self._held) >= self.max_runs:
                    raise Conflict("server_busy", f"this server holds {self.max_runs} runs already")
                won = await run_in_threadpool(
                    self.store.take_run, record.id, was=record.served_by, now=address
                )
                if not won:
                    return None
                run = AsyncRun(
                    policy,
                    store=self.store,
                    tenant=record.tenant,
                    agent=record.agent,
                    run_id=record.id,
                    task=record.task,
                    credentials=self.secrets,
                )
                held = self._held[run.id] = Held(run, record.tenant)
                log.warning(
                    "run %s taken over from %s, which is gone (resumed: %s)",
                    record.id,
                    record.served_by,
                    run.usage.to_dict(),
                )
                return held
            finally:
                self._taking.pop(record.id, None)

    def _policy_with(self, digest: str) -> Policy | None:
        for candidate in self.policies.values():
            if candidate.digest == digest:
                return candidate
        return None

    # -- lookup ---------------------------------------------------------------------------
    def get(self, who: Principal, run_id: str, action: Action) -> Held:
        """The held run ``run_id`` if ``who`` may drive it; a run of another tenant is not
        found, one that ended answers with its end, one held elsewhere ``run_not_held``."""
        held = self._held.get(run_id)
        if held is None:
            self._not_held(who, run_id, action)
        if not permits(who, action, held.tenant):
            raise NotFound(f"no run {run_id!r}")
        held.touched = time.monotonic()
        return held

    def _not_held(self, who: Principal, run_id: str, action: Action) -> NoReturn:
        """Raise what a request for a run not held here gets: ``run_ended`` for one that
        ended, ``run_not_held`` for one running elsewhere, not found for the rest (and for
        another tenant's)."""
        ended = self._ended.get(run_id)
        if ended is not None:
            tenant, status = ended[0], "ended"
        else:
            record = self.store.get_run(run_id)
            if record is None:
                raise NotFound(f"no run {run_id!r}")
            tenant, status = record.tenant, record.status
        if not permits(who, action, tenant):
            raise NotFound(f"no run {run_id!r}")
        if status != "running":
            raise Conflict("run_ended", f"run {run_id!r} has ended")
        raise Conflict(
            "run_not_held",
            f"run {run_id!r} is driven by another server process (give each replica an "
            "address, corral serve --advertise, so that they pass requests on to each other; "
            "or send a run's requests to the replica that started it)",
        )

    def ended(self, run_id: str) -> RunResult | None:
        """The result of a run that ended here lately."""
        found = self._ended.get(run_id)
        return None if found is None else found[1]

    # -- open work ------------------------------------------------------------------------
    @staticmethod
    def keep(table: dict[str, Any], item: Any, prefix: str) -> str:
        """Keep ``item`` in ``table`` under a new id; refuse past :data:`MAX_OPEN`."""
        if len(table) >= MAX_OPEN:
            raise Conflict("too_many_open", f"this run has {MAX_OPEN} unreported calls open")
        key = prefix + secrets.token_hex(10)
        table[key] = item
        return key

    @staticmethod
    def take(table: dict[str, Any], key: str, what: str, run_id: str) -> Any:
        """The open ``what`` kept under ``key``, taken out (each is settled once); not
        found when there is none."""
        item = table.pop(key, None)
        if item is None:
            raise NotFound(f"no open {what} {key!r} in run {run_id!r}")
        return item

    # -- end ------------------------------------------------------------------------------
    async def end(
        self,
        held: Held,
        *,
        answer: Any = None,
        stop: BaseException | None = None,
        failure: BaseException | None = None,
    ) -> RunResult:
        """End ``held``: with ``answer`` (``ok``), with the stop it raised, or with the
        agent's own ``failure`` (``agent_error``); forget it."""
        run = held.run
        if held.result is None:
            if failure is not None:
                await run.__aexit__(type(failure), failure, None)
            elif stop is not None:
                await run.__aexit__(type(stop), stop, None)
            else:
                try:
                    await run.finish(answer)
                except Stop as raised:  # the run had stopped: its stop is its end
                    await run.__aexit__(Stop, raised, None)
            held.result = run.result
        self._forget(held)
        return held.result

    def _forget(self, held: Held) -> None:
        assert held.result is not None
        current = asyncio.current_task()
        for task in held.inflight.values():  # the run has ended: nothing more to wait for
            if task is not current:
                task.cancel()
        run_id = held.run.id
        self._held.pop(run_id, None)
        self._ended[run_id] = (held.tenant, held.result)
        while len(self._ended) > self.max_runs:  # the oldest first
            self._ended.pop(next(iter(self._ended)))

    async def sweep(self, now: float | None = None) -> int:
        """End the runs idle past :attr:`idle_seconds` as cancelled; how many."""
        at = time.monotonic() if now is None else now
        idle = [h for h in self._held.values() if at - h.touched > self.idle_seconds]
        for held in idle:
            await self.cancel(held, "idle")
        return len(idle)

    async def cancel(self, held: Held, why: str) -> None:
        held.run.cancel()
        message = {"idle": f"no request for {self.idle_seconds:.0f} s"}.get(why, why)
        await self.end(held, stop=Stop("cancelled", "server", message=message))

    async def close(self) -> None:
        """End every held run as cancelled (the server is stopping)."""
        for held in list(self._held.values()):
            await self.cancel(held, "the server stopped")

    async def sweeper(self, every: float = 30.0) -> None:
        """Every ``every`` seconds, until cancelled: sweep idle runs, and renew the
        heartbeat of the runs held here that wrote nothing meanwhile."""
        while True:
            await asyncio.sleep(every)
            await self.sweep()
            await self.beat(older_than=every)

    async def beat(self, *, older_than: float = 0.0) -> int:
        """Renew the heartbeat of each held run without a request for ``older_than``
        seconds; how many (a store that fails is tried again at the next sweep)."""
        now = time.monotonic()
        quiet = [h.run.id for h in self._held.values() if now - h.touched >= older_than]
        for run_id in quiet:
            try:
                await run_in_threadpool(self.store.heartbeat, run_id)
            except Exception as exc:  # a store object may raise anything: the next sweep
                log.warning("could not renew the heartbeat of run %s: %s", run_id, exc)
                return 0
        return len(quiet)
