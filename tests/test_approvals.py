"""Approvals through the store's queue: a run waits for a decision taken in another process,
consumes it once, and stops on denial, expiry, a kill switch or a failing store.

The queue is exercised on SQLite and on a real PostgreSQL server (skipped when there is none,
failed under CI), across threads and across processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.controls import approvals
from corral.exceptions import StoreError
from corral.record import audit
from corral.stores.base import ApprovalRecord, KillSwitchState, Store
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore
from crash import pg as crash_pg


@dataclass
class Shared:
    """A store other processes can reach, and the URL they reach it by."""

    store: Store
    url: str


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shared]:
    """A fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        path = tmp_path / "corral.db"
        store = SQLiteStore(str(path))
        try:
            yield Shared(store, f"sqlite:///{path}")
        finally:
            store.close()
        return
    pg = crash_pg()
    url = pg.require_postgres()
    with pg.fresh_store(url) as store:
        yield Shared(store, f"{url}?schema={store.schema}")


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Shared]:
    """A fresh SQLite file."""
    path = tmp_path / "corral.db"
    store = SQLiteStore(str(path))
    try:
        yield Shared(store, f"sqlite:///{path}")
    finally:
        store.close()


def policy(timeout: float = 30.0, **budgets: Any) -> corral.Policy:
    """refund.send (a write, needing approval) allowed; approvals time out."""
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["refund.send"]},
            "writes": {"require_approval": True, "approval_timeout_seconds": timeout},
            "budgets": {"max_tool_calls": 10, **budgets},
        }
    )


class Refunds:
    """The refund.send tool, recording every execution."""

    def __init__(self) -> None:
        self.sent: list[int] = []

        def send(amount: int, note: str = "") -> str:
            self.sent.append(amount)
            return f"sent {amount}"

        self.tool = corral.tool(send, name="refund.send", effect="write")


def pending(store: Store, count: int = 1, timeout: float = 15.0) -> list[ApprovalRecord]:
    """Wait until ``count`` approvals are pending; return them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = store.list_approvals()
        if len(found) >= count:
            return found
        time.sleep(0.01)
    pytest.fail(f"{count} pending approval(s) never appeared (found {store.list_approvals()})")


def reattached(store: Store, run_id: str, timeout: float = 15.0) -> None:
    """Wait until a second process resuming ``run_id`` has re-attached to its request (on a
    loaded machine, starting a process takes longer than any fixed pause)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(
            e.kind == "approval_requested" and e.data.get("reattached")
            for e in store.events(run_id)
        ):
            return
        time.sleep(0.01)
    pytest.fail(f"no process re-attached to the request of {run_id}")


class Agent(threading.Thread):
    """A governed run in a thread, offering ``calls`` in order; ``result`` when done."""

    def __init__(
        self, store: Store, calls: list[dict[str, Any]], *, timeout: float = 30.0, **run: Any
    ) -> None:
        super().__init__(daemon=True)
        self.refunds = Refunds()
        self.store = store
        self.calls = calls
        self.policy = policy(timeout)
        self.run_options = run
        self.outputs: list[Any] = []
        self.result: corral.RunResult | None = None
        self.start()

    def run(self) -> None:
        with corral.Run(
            self.policy, tools=[self.refunds.tool], store=self.store, **self.run_options
        ) as governed:
            for args in self.calls:
                self.outputs.append(governed.call("refund.send", args))
            governed.finish("done")
        self.result = governed.result

    def done(self, timeout: float = 20.0) -> corral.RunResult:
        self.join(timeout)
        assert not self.is_alive(), "the agent is still waiting"
        assert self.result is not None
        return self.result


def decisions(store: Store) -> list[Any]:
    """The audit records of approval decisions."""
    return [r for r in audit.records(store) if r.kind == approvals.DECISION_EVENT]


# -- another process decides ------------------------------------------------------------------

AGENT = textwrap.dedent(
    """
    import json, sys
    import corral

    url, timeout, amount = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    run_id = sys.argv[4] if len(sys.argv) > 4 else None
    sent = []

    @corral.tool(name="refund.send", effect="write")
    def send(amount: int) -> str:
        sent.append(amount)
        return f"sent {amount}"

    policy = corral.Policy.from_dict({
        "tools": {"allow": ["refund.send"]},
        "writes": {"require_approval": True, "approval_timeout_seconds": timeout},
    })
    with corral.Run(policy, tools=[send], store=url, agent="support-bot", tenant="acme",
                    run_id=run_id) as run:
        print("run", run.id, flush=True)
        out = run.call("refund.send", {"amount": amount})
        run.finish(out)
    r = run.result
    print(json.dumps({"status": r.status, "stop_reason": r.stop_reason, "answer": r.answer,
                      "sent": sent, "waiting": r.usage.waiting_seconds,
                      "active": r.usage.active_seconds}), flush=True)
    """
)


def agent_process(url: str, timeout: float = 30.0, amount: int = 5, *more: str) -> Any:
    """The agent in a process of its own; its first line names its run."""
    return subprocess.Popen(
        [sys.executable, "-c", AGENT, url, str(timeout), str(amount), *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The agent's result line."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return dict(json.loads(out.strip().splitlines()[-1]))


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=60
    )


def test_a_second_process_approves_through_the_cli_while_the_agent_waits(shared: Shared) -> None:
    """The agent waits in its process; `corral approvals approve` in another lets it run, once."""
    agent = agent_process(shared.url)
    try:
        (request,) = pending(shared.store)
        assert (request.tool, request.tenant, request.agent) == (
            "refund.send",
            "acme",
            "support-bot",
        )
        assert request.arguments == {"amount": 5}
        assert 29 <= request.expires - request.created <= 31
        time.sleep(0.3)  # let it wait a while: not charged to max_seconds
        done = corral_cli(
            "approvals",
            "approve",
            request.id,
            "--as",
            "alice",
            "--reason",
            "ok'd",
            "--db",
            shared.url,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"approved {request.id}: refund.send for run")
        result = finished(agent)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert (result["status"], result["answer"], result["sent"]) == ("ok", "sent 5", [5])
    assert result["waiting"] >= 0.3 and result["active"] < result["waiting"]
    used = shared.store.get_approval(request.id)
    assert used is not None and used.status == "used" and used.approver == "alice"
    assert used.used_at is not None and used.decided_at is not None
    (audited,) = decisions(shared.store)
    assert (audited.actor, audited.tenant, audited.run_id) == ("alice", "acme", request.run_id)
    assert audited.data["status"] == "approved" and audited.data["reason"] == "ok'd"
    assert audited.data["approval_id"] == request.id
    assert (audited.tool, audited.args_digest) == ("refund.send", request.args_digest)
    assert audit.verify(shared.store).ok


def test_a_denial_stops_the_run_with_approval_denied(shared: Shared) -> None:
    """A denied request stops the run with approval_denied, naming who denied it and why."""
    agent = Agent(shared.store, [{"amount": 9}], agent="bot")
    (request,) = pending(shared.store)
    approvals.deny(shared.store, request.id, approver="carol", reason="wrong customer")
    result = agent.done()
    assert (result.stop_reason, agent.refunds.sent) == ("approval_denied", [])
    assert result.stop is not None and "wrong customer" in result.stop.message
    denied = shared.store.get_approval(request.id)
    assert denied is not None and (denied.status, denied.approver) == ("denied", "carol")
    assert [(r.actor, r.data["status"]) for r in decisions(shared.store)] == [("carol", "denied")]


def test_no_decision_in_time_expires_the_request_without_charging_max_seconds(
    shared: Shared,
) -> None:
    """Past approval_timeout_seconds the request is expired and the run stops approval_timeout,
    even with max_seconds shorter than the wait."""
    refunds = Refunds()
    with corral.Run(
        policy(0.4, max_seconds=0.2), tools=[refunds.tool], store=shared.store, agent="bot"
    ) as run:
        run.call("refund.send", {"amount": 1})
    result = run.result
    assert (result.stop_reason, refunds.sent) == ("approval_timeout", [])
    assert result.usage.waiting_seconds >= 0.4 and result.usage.active_seconds < 0.2
    (record,) = shared.store.list_approvals(status=None)
    assert (record.status, record.approver) == ("expired", approvals.SYSTEM_ACTOR)
    assert [r.actor for r in decisions(shared.store)] == [approvals.SYSTEM_ACTOR]
    with pytest.raises(corral.ApprovalError, match="it is expired"):
        approvals.approve(shared.store, record.id, approver="late")


def test_one_approval_authorizes_one_execution_and_new_arguments_need_their_own(
    shared: Shared,
) -> None:
    """An approval is bound to its arguments and used once: changed arguments wait anew."""
    agent = Agent(shared.store, [{"amount": 5}, {"amount": 500}], timeout=1.5, agent="bot")
    (first,) = pending(shared.store)
    approvals.approve(shared.store, first.id, approver="alice")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        second = [a for a in shared.store.list_approvals() if a.id != first.id]
        if second:
            break
        time.sleep(0.01)
    assert second and second[0].arguments["amount"] == 500
    assert second[0].args_digest != first.args_digest
    result = agent.done()
    assert (result.stop_reason, agent.refunds.sent) == ("approval_timeout", [5])
    statuses = {a.id: a.status for a in shared.store.list_approvals(status=None)}
    assert statuses == {first.id: "used", second[0].id: "expired"}


def test_two_processes_resuming_one_run_execute_its_approved_call_once(shared: Shared) -> None:
    """Two copies of one run wait on one request; the approval lets exactly one of them run."""
    first = agent_process(shared.url, 3.0)
    try:
        (request,) = pending(shared.store)
        second = agent_process(shared.url, 3.0, 5, request.run_id)
        try:
            reattached(shared.store, request.run_id)  # the second waits on it too: one request
            assert [a.id for a in shared.store.list_approvals(status=None)] == [request.id]
            approvals.approve(shared.store, request.id, approver="alice")
            results = [finished(first), finished(second)]
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert sorted(r["stop_reason"] for r in results) == ["approval_timeout", "ok"]
    assert sorted(len(r["sent"]) for r in results) == [0, 1]
    statuses = sorted(a.status for a in shared.store.list_approvals(status=None))
    assert statuses == ["expired", "used"]  # the loser filed its own request, which expired


def test_a_run_resumed_after_sigkill_reattaches_to_its_pending_request(sqlite: Shared) -> None:
    """A run killed while waiting, resumed by id, waits on the same request, not a new one."""
    agent = agent_process(sqlite.url)
    (request,) = pending(sqlite.store)
    os.kill(agent.pid, signal.SIGKILL)
    agent.communicate()
    again = agent_process(sqlite.url, 30.0, 5, request.run_id)
    try:
        assert again.stdout is not None
        assert again.stdout.readline().split() == ["run", request.run_id]
        time.sleep(0.5)
        assert [a.id for a in sqlite.store.list_approvals(status=None)] == [request.id]
        approvals.approve(sqlite.store, request.id, approver="alice")
        result = finished(again)
    finally:
        if again.poll() is None:
            again.kill()
            again.communicate()
    assert (result["stop_reason"], result["sent"]) == ("ok", [5])


# -- the kill switch ----------------------------------------------------------------------------


def test_a_pending_approval_cancelled_by_disable_writes_end_to_end(sqlite: Shared) -> None:
    """`corral kill enable --mode disable_writes` cancels the waiting request in the other
    process, which stops with kill_switch without running the write."""
    agent = agent_process(sqlite.url)
    try:
        (request,) = pending(sqlite.store)
        done = corral_cli(
            "kill", "enable", "--mode", "disable_writes", "--tenant", "acme",
            "--reason", "refund storm", "--by", "oncall", "--db", sqlite.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "cancelled 1 pending approval" in done.stdout
        result = finished(agent)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.communicate()
    assert (result["stop_reason"], result["sent"]) == ("kill_switch", [])
    cancelled = sqlite.store.get_approval(request.id)
    assert cancelled is not None and (cancelled.status, cancelled.approver) == (
        "cancelled",
        "oncall",
    )
    assert "refund storm" in cancelled.reason
    (audited,) = decisions(sqlite.store)
    assert (audited.actor, audited.data["status"]) == ("oncall", "cancelled")


def test_a_waiting_run_cancels_its_request_when_a_switch_covers_it(shared: Shared) -> None:
    """A switch set without cancelling anything is seen by the waiting run itself."""
    agent = Agent(shared.store, [{"amount": 5}], agent="bot")
    (request,) = pending(shared.store)
    shared.store.set_kill_switch(
        KillSwitchState(scope="agent", target="bot", mode="stop_all", reason="r", actor="ops")
    )
    result = agent.done()
    assert (result.stop_reason, agent.refunds.sent) == ("kill_switch", [])
    cancelled = shared.store.get_approval(request.id)
    assert cancelled is not None and (cancelled.status, cancelled.approver) == ("cancelled", "ops")


def record(id: str, **fields: Any) -> ApprovalRecord:
    """A pending approval of a write (blocked by stop_all and disable_writes)."""
    base: dict[str, Any] = {
        "run_id": "run_1",
        "tool": "refund.send",
        "args_digest": "d",
        "arguments": {},
        "tenant": "acme",
        "agent": "bot",
        "expires": time.time() + 60,
        "kill_modes": ("stop_all", "disable_writes"),
        "kill_mode": "disable_writes",
    }
    return ApprovalRecord(id=id, **(base | fields))


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        (KillSwitchState(scope="global", mode="stop_all"), {"w", "r", "x", "t", "o"}),
        (KillSwitchState(scope="global", mode="disable_writes"), {"w", "x", "t", "o"}),
        (KillSwitchState(scope="global", mode="disable_expensive"), {"x"}),
        (KillSwitchState(scope="global"), {"w", "x", "t", "o"}),  # the runs' own mode
        (KillSwitchState(scope="tenant", target="acme", mode="stop_all"), {"w", "r", "x", "t"}),
        (KillSwitchState(scope="agent", target="bot", mode="stop_all"), {"w", "r", "x", "t", "o"}),
        (KillSwitchState(scope="tool", target="kb.read", mode="stop_all"), {"r"}),
        (KillSwitchState(scope="run", target="run_2", mode="stop_all"), {"t"}),
    ],
)
def test_cancel_covered_follows_the_switch_scope_and_mode(
    switch: KillSwitchState, expected: set[str]
) -> None:
    """A switch cancels the pending approvals whose call it would block, and only those."""
    store = MemoryStore()
    store.create_approval(record("w"))
    store.create_approval(record("r", tool="kb.read", kill_modes=("stop_all",)))
    store.create_approval(
        record("x", kill_modes=("stop_all", "disable_writes", "disable_expensive"))
    )
    store.create_approval(record("t", run_id="run_2"))
    store.create_approval(record("o", tenant="other"))
    store.create_approval(record("done", status="approved"))
    cancelled = approvals.cancel_covered(store, switch, actor="oncall")
    assert {a.id for a in cancelled} == expected
    assert {a.id for a in store.list_approvals(status="cancelled")} == expected
    assert {r.actor for r in decisions(store)} <= {"oncall"}
    assert len(decisions(store)) == len(expected)


# -- waiting ------------------------------------------------------------------------------------


def test_the_async_run_waits_without_blocking_the_event_loop(shared: Shared) -> None:
    """While an AsyncRun waits for approval, other coroutines keep running."""
    refunds = Refunds()
    ticks = 0

    async def ticker(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    async def main() -> corral.RunResult:
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        async with corral.AsyncRun(policy(), tools=[refunds.tool], store=shared.store) as run:
            calling = asyncio.create_task(run.call("refund.send", {"amount": 3}))
            while not shared.store.list_approvals():
                await asyncio.sleep(0.01)
            before = ticks
            await asyncio.sleep(0.3)
            assert ticks - before >= 10, "the event loop was blocked while waiting"
            (request,) = shared.store.list_approvals()
            approvals.approve(shared.store, request.id, approver="alice")
            await calling
            await run.finish("done")
        stop.set()
        await ticking
        return run.result

    result = asyncio.run(main())
    assert (result.status, refunds.sent) == ("ok", [3])


def test_the_waiting_run_renews_its_heartbeat(sqlite: Shared) -> None:
    """A run waiting for a human keeps its heartbeat fresh, so it is not taken for dead."""
    agent = Agent(sqlite.store, [{"amount": 1}], timeout=2.5, agent="bot")
    (request,) = pending(sqlite.store)
    time.sleep(2.2)
    run = sqlite.store.get_run(request.run_id)
    assert run is not None and run.heartbeat_at is not None
    assert run.heartbeat_at >= request.created + 1.0
    assert agent.done().stop_reason == "approval_timeout"


class FailingStore(SQLiteStore):
    """A SQLite store whose approvals stop being readable once ``failing`` is set."""

    failing = False

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        if self.failing:
            raise StoreError("disk on fire")
        return super().get_approval(approval_id)


def test_a_store_failing_during_the_wait_fails_closed(tmp_path: Path) -> None:
    """When the store cannot be read while waiting, the run stops control_plane_unavailable."""
    store = FailingStore(str(tmp_path / "corral.db"))
    try:
        agent = Agent(store, [{"amount": 1}])
        pending(store)
        store.failing = True
        result = agent.done()
    finally:
        store.close()
    assert (result.stop_reason, agent.refunds.sent) == ("control_plane_unavailable", [])
    assert result.stop is not None and result.stop.detail == "approvals"
    assert "disk on fire" in result.stop.message


def test_cancelling_the_run_cancels_its_pending_request(sqlite: Shared) -> None:
    """run.cancel() from another thread ends the wait and cancels the request."""
    refunds = Refunds()
    box: dict[str, Any] = {}

    def go() -> None:
        with corral.Run(policy(), tools=[refunds.tool], store=sqlite.store) as run:
            box["run"] = run
            run.call("refund.send", {"amount": 1})
        box["result"] = run.result

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    (request,) = pending(sqlite.store)
    box["run"].cancel()
    worker.join(10)
    assert box["result"].stop_reason == "cancelled" and refunds.sent == []
    cancelled = sqlite.store.get_approval(request.id)
    assert cancelled is not None and cancelled.status == "cancelled"


def test_corral_show_places_the_decision_where_it_happened(sqlite: Shared) -> None:
    """The approver's decision (recorded by another actor) shows between the request and the
    call it allowed in ``corral show``, not before the run's first event."""
    from typer.testing import CliRunner

    from corral.cli.app import app

    agent = Agent(sqlite.store, [{"amount": 3}])
    (request,) = pending(sqlite.store)
    approvals.approve(sqlite.store, request.id, approver="alice", reason="ok")
    result = agent.done()
    shown = CliRunner().invoke(app, ["show", result.run_id, "--db", sqlite.url, "--json"])
    assert shown.exit_code == 0, shown.output
    kinds = [e["kind"] for e in json.loads(shown.output)["timeline"]]
    assert kinds.index("approval_requested") < kinds.index("approval_decision")
    assert kinds.index("approval_decision") < kinds.index("run_end")


# -- reachability -------------------------------------------------------------------------------


def test_an_in_memory_store_without_an_approver_is_refused_at_start() -> None:
    """No callback and a store no other process can reach: a clear error before anything runs."""
    with pytest.raises(corral.ConfigError, match="in-memory store is seen by no other process"):
        corral.Run(policy(), tools=[Refunds().tool], store=MemoryStore())


def test_a_database_store_is_a_reachable_queue(sqlite: Shared) -> None:
    """With a SQLite store and no callback, the run starts (and files requests there)."""
    with corral.Run(policy(), tools=[Refunds().tool], store=sqlite.store) as run:
        run.finish("nothing to approve")
    assert run.result.status == "ok"


def test_an_in_process_approver_still_answers_without_the_queue(sqlite: Shared) -> None:
    """Given a callback, the run asks it and files nothing in the store."""
    refunds = Refunds()
    with corral.Run(
        policy(), tools=[refunds.tool], store=sqlite.store, approver=lambda req: True
    ) as run:
        run.call("refund.send", {"amount": 2})
    assert refunds.sent == [2] and sqlite.store.list_approvals(status=None) == []


def test_secrets_in_arguments_are_redacted_in_the_request(sqlite: Shared) -> None:
    """The filed arguments go through the run's redactor: a secret-looking value is not stored."""
    agent = Agent(sqlite.store, [{"amount": 1, "note": "api_key=sk-ant-abcdefghijklmnop1234"}])
    (request,) = pending(sqlite.store)
    assert "sk-ant-abcdefghijklmnop1234" not in json.dumps(dict(request.arguments))
    approvals.deny(sqlite.store, request.id, approver="alice")
    agent.done()


def test_authorize_waits_on_the_queue_before_handing_over_the_call(sqlite: Shared) -> None:
    """run.authorize (the caller executes the tool) waits for the approval like run.call."""
    refunds = Refunds()
    box: dict[str, Any] = {}

    def go() -> None:
        with corral.Run(policy(), tools=[refunds.tool], store=sqlite.store) as run:
            ticket = run.authorize("refund.send", {"amount": 4})
            box["args"] = dict(ticket.arguments)
            box["observation"] = run.report(ticket, "sent 4 by the caller")
        box["result"] = run.result

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    (request,) = pending(sqlite.store)
    assert "args" not in box  # nothing handed over before the decision
    approvals.approve(sqlite.store, request.id, approver="alice")
    worker.join(10)
    assert box["args"]["amount"] == 4 and box["observation"] == "sent 4 by the caller"
    assert box["result"].status == "ok"
    assert sqlite.store.get_approval(request.id).status == "used"  # type: ignore[union-attr]


# -- what the approver is told ------------------------------------------------------------------


def test_an_approver_is_told_the_step_call_purpose_cost_effect_and_key() -> None:
    """The in-process approver's request carries the run's step, the model's tool call, the
    model's text of that turn (its stated purpose), the declared cost and effect, and the key."""
    from corral.testing import ScriptedModel, Turn, final

    seen: list[corral.ApprovalRequest] = []

    def approver(request: corral.ApprovalRequest) -> bool:
        seen.append(request)
        return True

    refunds = Refunds()
    pol = corral.Policy.from_dict(
        {
            "tools": {"allow": ["refund.send"], "specs": {"refund.send": {"cost_usd": 0.25}}},
            "writes": {"require_approval": True},
        }
    )
    call = corral.ToolCallRequest(name="refund.send", arguments={"amount": 5}, id="call_x")
    model = ScriptedModel(
        [
            Turn(text="The order arrived broken; refunding $5 as policy allows.", calls=(call,)),
            final("refunded"),
        ]
    )
    result = corral.run(
        "refund",
        model=model,
        tools=[refunds.tool],
        policy=pol,
        store="memory://",
        approver=approver,
    )
    assert result.stop_reason == "ok" and refunds.sent == [5]
    [request] = seen
    assert (request.step, request.effect, request.cost_usd) == (1, "write", Decimal("0.25"))
    assert request.purpose == "The order arrived broken; refunding $5 as policy allows."
    assert request.call_id == "turn-1.0"
    assert request.idempotency_key is not None and request.idempotency_key.startswith("call:")


def test_the_queue_keeps_the_context_and_the_cli_shows_it(shared: Shared) -> None:
    """A request filed in the store keeps the context (purpose redacted of the run's secrets);
    ``corral approvals show`` prints it and ``--json`` gives it as fields."""
    secret = "sk-live-9f8e7d6c5b4a39281706"
    refunds = Refunds()
    found: dict[str, Any] = {}

    def decide() -> None:
        [record] = pending(shared.store)
        found["record"] = record
        found["show"] = corral_cli("approvals", "show", record.id, "--db", shared.url)
        found["json"] = corral_cli("approvals", "show", record.id, "--json", "--db", shared.url)
        approvals.approve(shared.store, record.id, approver="alice")

    decider = threading.Thread(target=decide, daemon=True)
    decider.start()
    with corral.Run(
        policy(),
        tools=[refunds.tool],
        store=shared.store,
        credentials={"refund.send": {"api_key": secret}},
    ) as run:
        run._core.turn_text = f"refund it; the key is {secret}"  # as a model turn would set it
        run.call("refund.send", {"amount": 7}, call_id="c-7")
        run.finish("ok")
    decider.join(20)
    assert refunds.sent == [7]
    context = found["record"].context
    assert context["call_id"] == "c-7" and context["effect"] == "write"
    assert context["step"] == 0 and context["cost_usd"] == "0"
    assert secret not in context["purpose"] and "[REDACTED]" in context["purpose"]
    assert context["idempotency_key"].startswith("call:")
    shown = found["show"].stdout
    assert found["show"].returncode == 0 and "purpose (the model's text of that turn):" in shown
    assert "call id:" in shown and "c-7" in shown and secret not in shown
    data = json.loads(found["json"].stdout)["approval"]
    assert data["call_id"] == "c-7" and data["effect"] == "write" and data["step"] == 0
