"""The in-memory store: one process, nothing persisted. For tests and ``memory://``.

The package: :mod:`.state` holds the tables (dictionaries under one lock); one module
per concern of the :class:`~corral.stores.base.Store` Protocol (:mod:`.runs`,
:mod:`.events`, :mod:`.budgets`, :mod:`.switches`, :mod:`.approvals`, :mod:`.claims`,
:mod:`.breakers`) holds that part of :class:`MemoryStore` (:mod:`.store`). It
imports the stores' shared modules (records, rules, scopes, grants, chain, owner,
leases). ``shared`` is false: no other process sees this state.
"""

from __future__ import annotations

from corral.stores.memory.store import MemoryStore

__all__ = ["MemoryStore"]
