"""Shared operator state behind the guards, held in the store so every process agrees.

- ``killswitch``: switches by scope and mode, their cache and fail-closed reads;
- ``approvals``: the queue of approval requests and their decisions;
- ``breaker``: per-dependency circuit breakers and retry budgets;
- ``keys``: API keys, their tenants and roles, and what each role may do;
- ``leases``: the process's one renewer of leases (grants, claims).

Imports ``corral.stores``, ``corral.record`` and the top-level modules.
"""
