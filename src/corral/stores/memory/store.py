"""The in-memory store itself: every concern's part over one set of tables.

:class:`MemoryStore` is the sum of one mixin per concern of the
:class:`~corral.stores.base.Store` Protocol (:mod:`.runs`, :mod:`.events`,
:mod:`.budgets`, :mod:`.switches`, :mod:`.approvals`, :mod:`.claims`, :mod:`.breakers`,
:mod:`.keys`, :mod:`.figures`, :mod:`.recordings`,
:mod:`.definitions`),
each over the tables of :mod:`.state`.
"""

from __future__ import annotations

from corral.stores.grants import GrantLeases
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.memory.approvals import Approvals
from corral.stores.memory.breakers import Breakers
from corral.stores.memory.budgets import Budgets
from corral.stores.memory.claims import Claims
from corral.stores.memory.definitions import Definitions
from corral.stores.memory.events import Events
from corral.stores.memory.figures import Figures
from corral.stores.memory.keys import Keys
from corral.stores.memory.recordings import Recordings
from corral.stores.memory.runs import Runs
from corral.stores.memory.switches import KillSwitches


class MemoryStore(
    Runs,
    Events,
    Budgets,
    KillSwitches,
    Approvals,
    Claims,
    Breakers,
    Keys,
    Figures,
    Recordings,
    Definitions,
):
    """A complete :class:`~corral.stores.base.Store` held in dictionaries under one lock.

    ``fail`` makes every call raise :class:`~corral.exceptions.StoreError`
    (to test fail-closed behaviour). The audit chain is keyed when
    ``CORRAL_AUDIT_KEY`` is set at construction. Events take their place in the chain
    when appended and are sealed when the chain is next read: in one process's
    memory a hash protects nothing until someone looks, and appending stays cheap.
    """

    #: This process alone sees it: no other process reads its kill switches or approvals.
    shared = False

    def __init__(
        self, *, grant_lease: float = LEASE_SECONDS, renewer: Renewer | None = None
    ) -> None:
        super().__init__()
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
