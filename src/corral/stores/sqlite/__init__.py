"""The SQLite store: one file, shared by every process on the machine.

The default store (one file per user: :func:`corral.stores.default_path`). Contended
state relies on SQLite's own locking, so it holds across processes, not only threads:
every read-modify-write (scoped reservations, idempotency claims, approval decisions)
runs in one ``BEGIN IMMEDIATE`` transaction, which takes the database's write lock
before it reads. The file is in WAL mode with ``synchronous=NORMAL``: a committed write
survives the process being killed (``FULL`` also survives power loss, at a cost
per commit). Readers never wait for the writer; a writer waits up to
``busy_timeout`` seconds for another, and a call made for a run (with
:data:`corral.clock.DEADLINE` set) no longer than the run has left, also for the
store's own lock when another thread of the process holds it.

Each store object holds one connection behind a lock, so threads of one process
queue on a mutex rather than on SQLite's sleeping busy handler; a process forked
from one that had the store open reconnects on first use (:mod:`.connection`).

A file removed, renamed or replaced while the store has it open (or its ``-wal`` or
``-shm`` file) is noticed at the next kill-switch read (every 0.1 s in a process that
runs agents), heartbeat or failed statement (:mod:`corral.stores.filewatch`): from
then on every call raises :class:`~corral.exceptions.StoreGone` and runs stop with
``control_plane_unavailable``, instead of writing on into a file nobody reads.

USD amounts are stored as the exact decimal text and added up in Python inside
the write transaction, so a :class:`~decimal.Decimal` round-trips unchanged.
Mappings (events, usage, approval arguments, outcomes) are JSON; a value JSON
cannot hold is stored as its ``str()`` (:mod:`.rows`).

Events are the audit log: each append seals the events (:mod:`corral.stores.chain`) after
the chain's head and moves the head in its ``BEGIN IMMEDIATE`` transaction, so every
process appending to the file extends one chain. An event's ``id`` (the table's rowid)
is its place in the chain: no extra index to write per event. Triggers refuse to change
or delete a sealed event. The head is never taken on trust: a store object seals an
append, before the transaction, after the head it last wrote, and one conditional
statement inside the transaction moves the head only if it is still that one; otherwise
(another connection appended since) the head is read there and the events sealed again
(:mod:`.audit`). Appending
also renews the runs' heartbeat, at most once per
:data:`~corral.stores.sqlite.connection.HEARTBEAT_SECONDS`.

``commit="group"`` (URL ``?commit=group&window_ms=N``) holds the outcomes of read tools
and commits them in one transaction within the window, from a daemon thread
(:mod:`.events`, :mod:`.background`); everything else, a write's authorization first,
stays synchronous.

The package: :mod:`.sql` holds every statement, :mod:`.rows` the conversions between
rows and records, :mod:`.connection` the connection and its transactions,
:mod:`.audit` the sealing of appended events, :mod:`.background` the group-commit thread,
:mod:`.forks` the connection across ``fork``;
one module per concern of the :class:`~corral.stores.base.Store` Protocol (:mod:`.runs`,
:mod:`.events`, :mod:`.budgets`, :mod:`.switches`, :mod:`.approvals`, :mod:`.claims`,
:mod:`.breakers`) holds that part of :class:`SQLiteStore` (:mod:`.store`). It
imports the stores' shared modules (records, rules, scopes, grants, chain, migrate,
owner, filewatch, leases), never a backend of its own kind.

>>> from corral.stores.records import RunRecord
>>> store = SQLiteStore(":memory:")
>>> store.create_run(RunRecord(id="run_1", tenant="acme"))
>>> store.get_run("run_1").status
'running'
>>> store.close()
"""

from __future__ import annotations

from corral.stores.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore"]
