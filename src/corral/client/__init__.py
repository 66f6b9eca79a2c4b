"""The remote client: :class:`Run` and :class:`AsyncRun` with the in-process interface,
governed by a ``corral serve`` instead of a store in this process.

Moving an agent to the service is one change, ``store=...`` to ``server=URL`` (and an
agent key: ``key=`` or ``CORRAL_KEY``)::

    with corral.client.Run(policy, tools=[search], server="http://corral:8420") as run:
        obs = run.call("search.read", {"query": "vendor status"})

The server decides (the same gateway as in-process); your tools still run here. The
policy is the server's: ``policy`` is the name of one of its policies, or a
:class:`~corral.Policy` whose digest matches one (so the file you test with locally is the
file the server enforces); every tool the run uses must be described by it
(``tools.specs.NAME.args_schema`` and ``effect``).

It fails closed: a server that cannot be reached, or answers with an error of its own, is
``control_plane_unavailable`` — raised as the run's :class:`~corral.Stop` at its first
governed action, never an allow. A request the server refuses as malformed or not permitted
(a bad key, a role or tenant that may not, an unknown policy) raises at once
(:class:`~corral.exceptions.AccessError`, :class:`~corral.ConfigError`).

Imports the top-level modules (exceptions, stops, result, tools), the meter's ``Usage``
and the policy; httpx for the wire.
"""

from __future__ import annotations

from corral.client.aio import AsyncRun
from corral.client.sync import Run

__all__ = ["AsyncRun", "Run"]
