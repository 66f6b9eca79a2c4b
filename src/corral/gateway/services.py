"""The machinery a run shares with the other runs of its process, in one object a run is
given (``Run(..., services=...)``) or gets by default: where its events go besides the
store (sinks), the breaker's successes not yet written and the breakers read closed, the
kill-switch caches, and the thread that renews its leases (with their length).

The default is the process's own (:data:`DEFAULT`), as before: the metrics and trace
exporters install their sinks there. A test, or a host running runs side by side that
must not see each other's sinks or share a renewer, gives its runs a
:class:`Services` of their own:

>>> from corral.record.sinks import Sinks
>>> from corral.stores.leases import Renewer
>>> quick = Services(renewer=Renewer(interval=0.1, lease=0.5), sinks=Sinks())
>>> quick.renewer.lease, DEFAULT.renewer.lease
(0.5, 30.0)

Imports the controls, the record and the stores whose parts it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.controls.breaker import BREAKERS, SUCCESSES, BreakerStates, Successes
from corral.controls.killswitch import CACHES, SwitchCaches
from corral.record.sinks import SINKS, Sinks
from corral.stores.leases import RENEWER, Renewer

__all__ = ["DEFAULT", "Services"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """The shared parts a run uses; each defaults to the process's own."""

    sinks: Sinks = SINKS
    """Where the run's events go besides the store (metrics, exporters)."""
    successes: Successes = SUCCESSES
    """The breaker's successful attempts counted here and not yet added to the store."""
    breakers: BreakerStates = BREAKERS
    """Which breakers were read closed, taken as closed for ``REFRESH_SECONDS``."""
    switches: SwitchCaches = CACHES
    """The kill-switch cache of each store (read at most every ``REFRESH_SECONDS``)."""
    renewer: Renewer = RENEWER
    """Renews the leases of the run's idempotency claims while their writes run."""


#: The process's own services: what a run gets when it is given none.
DEFAULT = Services()
