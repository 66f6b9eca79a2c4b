"""The PostgreSQL store itself: every concern's part over one connection pool.

:class:`PostgresStore` is the sum of one mixin per concern of the
:class:`~corral.stores.base.Store` Protocol (:mod:`.runs`, :mod:`.events`,
:mod:`.budgets`, :mod:`.switches`, :mod:`.approvals`, :mod:`.claims`, :mod:`.breakers`,
:mod:`.keys`, :mod:`.figures`, :mod:`.recordings`,
:mod:`.definitions`),
each over the pool of :mod:`.connection`.
"""

from __future__ import annotations

from corral.stores.grants import GrantLeases
from corral.stores.leases import LEASE_SECONDS, Renewer
from corral.stores.postgres.approvals import Approvals
from corral.stores.postgres.breakers import Breakers
from corral.stores.postgres.budgets import Budgets
from corral.stores.postgres.claims import Claims
from corral.stores.postgres.definitions import Definitions
from corral.stores.postgres.events import Events
from corral.stores.postgres.figures import Figures
from corral.stores.postgres.keys import Keys
from corral.stores.postgres.recordings import Recordings
from corral.stores.postgres.runs import Runs
from corral.stores.postgres.switches import KillSwitches


class PostgresStore(
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
    """A complete :class:`~corral.stores.base.Store` in PostgreSQL, safe across processes.

    ``url`` is a libpq URL or DSN (``postgresql://user@host:5432/db``), optionally
    with ``?schema=NAME``. ``max_size`` bounds the pool; ``connect_timeout``,
    ``pool_timeout`` (waiting for a free connection) and ``statement_timeout``
    (seconds) bound every call, after which it raises ``StoreError``. The audit chain
    is keyed when ``CORRAL_AUDIT_KEY`` is set at construction.
    """

    #: Every process and machine that names the database shares it.
    shared = True

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 3.0,
        pool_timeout: float = 2.0,
        statement_timeout: float = 10.0,
        migrate: bool = True,
        grant_lease: float = LEASE_SECONDS,
        renewer: Renewer | None = None,
    ) -> None:
        self.leases = GrantLeases(self.renew_grants, lease=grant_lease, renewer=renewer)
        super().__init__(
            url,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
            statement_timeout=statement_timeout,
            migrate=migrate,
        )
        try:
            self.mark_interrupted()
        except BaseException:
            self._pool.close()
            raise
        self._register()
