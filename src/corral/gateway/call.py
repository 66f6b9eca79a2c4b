"""One tool call as it passes the chain (:mod:`corral.gateway.chain`): what was asked, what
the guards found out about it (the tool as the run treats it, the checked arguments and
their digest, the idempotency key, the credentials), and what it holds (the attempt's
budget hold, the write's claim and its lease renewals).

The run's own things (usage, limits, ids, clock, store) stay on the
:class:`~corral.gateway.state.RunState` it points to. Imports nothing but type names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.gateway.effective import Effective
    from corral.gateway.state import RunState
    from corral.stores.leases import Held
    from corral.tools import Tool

_NONE: Mapping[str, str] = {}  # never written to


class Call:
    """The per-call state the chain's steps read and write.

    The class holds the defaults, so that making one sets only what the caller asked (the
    allow path makes one per call); ``eff`` and ``tool`` are set by the chain's first step,
    before any other reads them.
    """

    key: str | None = None
    """The caller's idempotency key."""
    call_id: str | None = None
    """The call's identity in the run (the model's tool call)."""
    external = False
    """Whether the caller executes the tool (``Run.authorize``/``report``)."""
    ids: Mapping[str, Any] = _NONE
    """What goes on each of the call's events to identify it (its ``call_id`` and the
    caller's ``attributes``, scrubbed)."""
    attributes: Mapping[str, str] = _NONE
    """The caller's attributes for the call's events and ``execute_tool`` span."""
    tool_name = ""
    """The name as shown (``repr`` of a name that is not a string)."""
    eff: Effective = None  # type: ignore[assignment]  # set when admitted
    """The tool as the run treats it."""
    tool: Tool = None  # type: ignore[assignment]  # set when admitted
    write = False
    """Whether the tool is a write (set when admitted)."""
    args: dict[str, Any]
    """The checked arguments (set when admitted)."""
    text = ""
    """The canonical JSON of :attr:`args`."""
    digest = ""
    """Its SHA-256: keys the cache, approvals and idempotency."""
    probe = False
    """Whether this call is its breaker's one half-open probe."""
    idem_key: str | None = None
    """A write's idempotency key, once derived."""
    credentials: Mapping[str, str] = _NONE
    attempt = 0
    claimed = False
    """Whether this call holds its write's idempotency claim."""
    renewals: Sequence[Held] = ()
    """The claim's lease renewals (a list once there is one), released when the call ends."""
    elapsed = 0.0
    """How long the last attempt ran (seconds)."""

    def __init__(
        self,
        run: RunState,
        name: Any,
        raw_args: Any,
        key: str | None,
        call_id: str | None,
        external: bool,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.run = run
        self.name = name  # as asked (any object: the registry check refuses non-names)
        self.raw_args = raw_args
        # The rest only when given (the class holds the defaults).
        if key is not None:
            self.key = key
        if call_id is not None:
            self.call_id = call_id
        if external:
            self.external = external
        if attributes:
            self.attributes = attributes
