"""How a corral stop ends an SDK run: :class:`RunStopped`, the SDK's own exception type
carrying corral's :class:`~corral.Stop`.

Imports the SDK's exceptions and ``corral.exceptions``.
"""

from __future__ import annotations

from agents.exceptions import AgentsException

from corral.exceptions import Stop


class RunStopped(AgentsException, Stop):
    """corral stopped the run: ``Runner.run`` raises this (an ``AgentsException``, the SDK's
    own family) and it is also the run's :class:`corral.Stop`, so ``reason``, ``detail``,
    ``message``, ``retryable`` and ``retry_after`` say why, and leaving ``async with
    corral.AsyncRun(...)`` records it as the run's stop (not as an agent error).

    ``run_data`` is the SDK's ``RunErrorDetails`` of the run, filled in by the SDK as the
    exception leaves ``Runner.run``.
    """

    def __init__(self, stop: Stop) -> None:
        # Not AgentsException.__init__: its super() chain would hand the message to Stop.
        Stop.__init__(self, stop.reason, info=stop.info)
        self.run_data = None
        self.run_id = stop.run_id


def stopped(stop: Stop) -> RunStopped:
    """``stop`` as the SDK's exception (itself when it already is one)."""
    return stop if isinstance(stop, RunStopped) else RunStopped(stop)
