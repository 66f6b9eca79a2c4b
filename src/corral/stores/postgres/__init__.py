"""The PostgreSQL store: shared state for several processes and machines.

``PostgresStore("postgresql://user@host/db")`` opens a connection pool (psycopg 3)
and brings the schema up to date with the shared migration runner (:mod:`corral.stores.migrate`,
files in ``migrations/postgres/``). Contended state relies on the database alone,
never on an in-process lock, so it holds across processes and machines:

- **reserve / settle** are one statement each (the schema's functions), locking the
  scopes' rows in one order everywhere; grants are leased and reclaimed in SQL
  (:mod:`.budgets`);
- **idempotency claims** are exclusive through the primary key (:mod:`.claims`);
- **approvals** and **interrupted runs** change by conditional updates
  (still pending; still running with the heartbeat that was judged);
- kill switches, breakers and runs are single-statement writes; setting or
  clearing a kill switch also sends ``NOTIFY corral_kill_switch`` (``scope:target``);
- **events** are the audit log, sealed into one chain by appenders on every machine:
  one round trip while this process is the only appender (:mod:`.events`).

Every other call is one statement in autocommit: one transaction, one round trip.
It fails closed, and never hangs: every wait is bounded, by the store's timeouts and
by the deadline of the run a call is made for (:mod:`.connection`, :mod:`.deadline`).

The package: :mod:`.sql` holds every statement, :mod:`.rows` the conversions between
rows and records, :mod:`.connection` the pool and the bounded call, :mod:`.deadline`
the client's own bound on a server that stops answering, :mod:`.audit` the sealing
of appended events; one module per concern of the :class:`~corral.stores.base.Store`
Protocol (:mod:`.runs`, :mod:`.events`, :mod:`.budgets`, :mod:`.switches`,
:mod:`.approvals`, :mod:`.claims`, :mod:`.breakers`) holds that part of
:class:`PostgresStore` (:mod:`.store`). It imports psycopg and the stores' shared
modules (records, rules, scopes, grants, chain, migrate, owner, leases).

Isolation (tests, several deployments in one database): ``schema="name"`` or a
``?schema=name`` URL parameter keeps every table in that schema, created if
missing. A test fixture gives each test an empty store with a schema of its own
and drops it afterwards (``tests/stores/pg.py``)::

    url = require_postgres()          # skips, or fails under CI, if unreachable
    with fresh_store(url) as store:   # PostgresStore(url, schema="corral_t_<random>")
        ...                           # the schema is dropped on exit
"""

from __future__ import annotations

import psycopg  # noqa: F401  (first: without the driver, importing this package says so)

from corral.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
