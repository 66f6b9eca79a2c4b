"""One tool call as it passes the chain (:mod:`corral.gateway.chain`): what was asked, what
the guards found out about it (the tool as the run treats it, the checked arguments and
their digest, the idempotency key, the credentials), and what it holds (the attempt's
budget hold, the write's claim and its lease renewals).

The run's own things (usage, limits, ids, clock, store) stay on the
:class:`~corral.gateway.state.RunState` it points to. Imports nothing but type names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.gateway.effective import Effective
    from corral.gateway.state import RunState
    from corral.stores.leases import Held
    from corral.tools import Tool

_NONE: Mapping[str, str] = {}  # never written to


class Call:
    """The per-call state the chain's steps read and write."""

    __slots__ = (
        "args",
        "attempt",
        "call_id",
        "claimed",
        "credentials",
        "digest",
        "eff",
        "elapsed",
        "external",
        "idem_key",
        "ids",
        "key",
        "name",
        "probe",
        "raw_args",
        "renewals",
        "run",
        "text",
        "tool",
        "tool_name",
    )

    def __init__(
        self,
        run: RunState,
        name: Any,
        raw_args: Any,
        key: str | None,
        call_id: str | None,
        external: bool,
    ) -> None:
        self.run = run
        self.name = name  # as asked (any object: the registry check refuses non-names)
        self.raw_args = raw_args
        self.key = key  # the caller's idempotency key
        self.call_id = call_id  # the call's identity in the run (the model's tool call)
        self.external = external  # the caller executes the tool (Run.authorize/report)
        # What goes on each of the call's events to identify it (its call_id, scrubbed).
        self.ids: Mapping[str, str] = _NONE
        self.tool_name = ""  # the name as shown (repr of a name that is not a string)
        self.eff: Effective | None = None  # the tool as the run treats it, once admitted
        self.tool: Tool | None = None
        self.args: dict[str, Any] = {}
        self.text = ""  # the canonical JSON of args
        self.digest = ""  # its SHA-256: keys the cache, approvals and idempotency
        self.probe = False  # whether this call is its breaker's one half-open probe
        self.idem_key: str | None = None  # a write's idempotency key, once derived
        self.credentials: Mapping[str, str] = _NONE
        self.attempt = 0
        self.claimed = False  # whether this call holds its write's idempotency claim
        # The claim's lease renewals, released when the call ends.
        self.renewals: list[Held] = []
        self.elapsed = 0.0  # how long the last attempt ran (seconds)

    @property
    def write(self) -> bool:
        return self.eff is not None and self.eff.effect == "write"
