"""What a run shares with its process comes from the one object it is given
(``corral.Services``): its event sinks, the breaker's tally, the kill-switch caches and
its lease renewal. Runs given their own see nothing of each other's; a run given none
uses the process's own, as before."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import corral
from corral.controls.breaker import Successes
from corral.controls.killswitch import SwitchCaches
from corral.gateway.services import DEFAULT
from corral.record import sinks
from corral.record.sinks import Sinks
from corral.stores.base import Event
from corral.stores.leases import Renewer
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore

POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["search.read", "crm.write"]},
        "writes": {"require_approval": False},
    }
)


@corral.tool(name="search.read", effect="read")
def search(q: str) -> str:
    return f"found {q}"


def test_a_run_without_services_uses_the_process_s_own() -> None:
    with corral.Run(POLICY, tools=[search], store="memory://") as run:
        pass
    assert run._core.services is DEFAULT
    assert DEFAULT.sinks is sinks.SINKS and DEFAULT.renewer.lease == 30.0


def test_a_run_s_events_go_to_its_own_sinks_and_not_the_process_s() -> None:
    mine: list[str] = []
    process: list[str] = []

    def process_sink(events: Sequence[Event]) -> None:
        process.extend(e.run_id for e in events)

    own = Sinks()
    own.add(lambda events: mine.extend(e.kind for e in events))
    sinks.add_sink(process_sink)
    try:
        with corral.Run(
            POLICY, tools=[search], store="memory://", services=corral.Services(sinks=own)
        ) as run:
            run.call("search.read", {"q": "x"})
        with corral.Run(POLICY, tools=[search], store="memory://") as other:
            pass
    finally:
        sinks.remove_sink(process_sink)
    assert mine[0] == "run_start" and "tool_call" in mine and mine[-1] == "run_end"
    assert run.id not in process and other.id in process


def test_two_runs_with_their_own_services_share_no_breaker_tally_or_switch_cache() -> None:
    a = corral.Services(successes=Successes(), switches=SwitchCaches())
    b = corral.Services(successes=Successes(), switches=SwitchCaches())
    store = MemoryStore()
    for services in (a, b):
        with corral.Run(POLICY, tools=[search], store=store, services=services) as run:
            run.call("search.read", {"q": "x"})
    assert a.switches.cache_for(store) is not b.switches.cache_for(store)
    assert a.switches.cache_for(store) is not DEFAULT.switches.cache_for(store)


def test_a_write_s_claim_is_leased_for_the_run_s_renewer_s_lease(tmp_path: Path) -> None:
    """The claim's lease is the renewer's: 0.4 s renewed every 0.1 s keeps it in flight
    while the write runs for a second, then done."""
    store = SQLiteStore(tmp_path / "corral.db")
    quick = corral.Services(renewer=Renewer(interval=0.1, lease=0.4))
    seen: list[float] = []

    @corral.tool(name="crm.write", effect="write")
    def slow_write(note: str) -> str:
        time.sleep(1.0)
        return "saved"

    def watch() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            claims = store.list_claims(now=time.time())
            if claims and claims[0].status == "done":
                return
            if claims:
                seen.append(claims[0].lease_until - time.time())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with corral.Run(POLICY, tools=[slow_write], store=store, services=quick) as run:
            run.call("crm.write", {"note": "n"}, idempotency_key="K-1")
        watcher.join(5)
        assert run.result.stop_reason == "ok"
        assert seen and max(seen) <= 0.45  # never the default 30 s
        assert {c.status for c in store.list_claims(now=time.time())} == {"done"}
    finally:
        store.close()
