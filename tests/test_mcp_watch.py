"""The one watch that cancels the calls in flight a ``stop_all`` switch comes to cover
(``corral.mcp.watch``): one task for every call of the proxy, not one per call."""

from __future__ import annotations

from typing import cast

import anyio

from corral.loop.tickets import Ticket
from corral.mcp.watch import Watch


class _Ticket:
    """A ticket whose kill-switch check answers what it is told."""

    def __init__(self) -> None:
        self.answer: BaseException | None = None
        self.raises: Exception | None = None

    def killed(self) -> BaseException | None:
        if self.raises is not None:
            raise self.raises
        return self.answer


def _watched(ticket: _Ticket, after: float) -> tuple[object, BaseException | None]:
    """Run a 5 s call under a watch that looks every 10 ms; the ticket's check changes
    after ``after`` seconds (no change when negative)."""

    async def main() -> tuple[object, BaseException | None]:
        watch = Watch(every=0.01)
        failure = RuntimeError("stop_all")

        async def slow() -> str:
            await anyio.sleep(5)
            return "done"

        async def switch() -> None:
            await anyio.sleep(after)
            ticket.answer = failure

        async with anyio.create_task_group() as group:
            group.start_soon(watch.run)
            if after >= 0:
                group.start_soon(switch)
            with anyio.fail_after(2):
                try:
                    found = await watch.call(cast(Ticket, ticket), slow)
                except ValueError as exc:  # raised in this task, not the watch's
                    found = ("raised", exc)
            group.cancel_scope.cancel()
        return found

    return anyio.run(main)


def test_the_watch_cancels_a_call_a_stop_all_switch_comes_to_cover() -> None:
    """One watch for every call in flight: once the ticket says a switch covers the call,
    the call is cancelled within a look or two and its failure handed back."""
    result, failure = _watched(_Ticket(), 0.05)
    assert result is None
    assert isinstance(failure, RuntimeError)


def test_the_watch_raises_in_the_call_what_its_check_raised() -> None:
    """A check that fails is the call's failure (raised in the call's task), never the
    watch's: the proxy's other calls are watched on."""
    ticket = _Ticket()
    ticket.raises = ValueError("cannot look")
    assert _watched(ticket, -1) == ("raised", ticket.raises)
