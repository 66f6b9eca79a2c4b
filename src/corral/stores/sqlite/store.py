"""The SQLite store itself: every concern's part over one connection.

:class:`SQLiteStore` is the sum of one mixin per concern of the
:class:`~corral.stores.base.Store` Protocol (:mod:`.runs`, :mod:`.events`,
:mod:`.budgets`, :mod:`.switches`, :mod:`.approvals`, :mod:`.claims`, :mod:`.breakers`,
:mod:`.keys`, :mod:`.figures`, :mod:`.recordings`,
:mod:`.definitions`),
each over the one connection of :mod:`.connection`.
"""

from __future__ import annotations

import os

from corral.stores.grants import GrantLeases
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.sqlite.approvals import Approvals
from corral.stores.sqlite.breakers import Breakers
from corral.stores.sqlite.budgets import Budgets
from corral.stores.sqlite.claims import Claims
from corral.stores.sqlite.definitions import Definitions
from corral.stores.sqlite.events import Events
from corral.stores.sqlite.figures import Figures
from corral.stores.sqlite.keys import Keys
from corral.stores.sqlite.recordings import Recordings
from corral.stores.sqlite.runs import Runs
from corral.stores.sqlite.switches import KillSwitches


class SQLiteStore(
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
    """A complete :class:`~corral.stores.base.Store` in one SQLite file.

    ``path`` is a file (created with its schema if missing, upgraded if older) or
    ``":memory:"`` for a private in-memory database. Opening marks ``interrupted``
    the runs left ``running`` by processes that died. Raises
    :class:`~corral.exceptions.StoreError` when the file cannot be opened and
    :class:`~corral.exceptions.ConfigError` when its schema is newer than this code.
    The audit chain is keyed when ``CORRAL_AUDIT_KEY`` is set at construction.

    ``commit="each"`` (the default) commits every append before it returns: a tool
    call's outcome survives the process being killed once the call has returned.
    ``commit="group"`` holds the outcomes of read tools and commits them in one
    transaction within ``window`` seconds (:mod:`.events`); a process killed meanwhile
    loses at most that window of reads' outcomes, and its run shows as ``interrupted``
    when the store is next opened. Writes' authorizations, claims and every other
    state change stay synchronous in both modes.
    """

    #: A database: other processes may share it (a ``:memory:`` one too counts as one).
    shared = True

    def __init__(
        self,
        path: str | os.PathLike[str] = "corral.db",
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 10.0,
        grant_lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
        commit: str = "each",
        window: float = 0.01,
    ) -> None:
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
        super().__init__(
            path, synchronous=synchronous, busy_timeout=busy_timeout, commit=commit, window=window
        )
        try:
            with self._locked():
                pass  # connect and migrate now, so a bad path or schema fails here
            self.mark_interrupted()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        if self.commit == "group":
            return f"SQLiteStore({self.path!r}, commit='group', window={self.window!r})"
        return f"SQLiteStore({self.path!r})"
