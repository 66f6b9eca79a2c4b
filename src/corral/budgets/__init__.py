"""Budgets: the run's meter (reserve, then settle) and the window limits shared across runs.

- ``meter``: limits, usage and the reserve/settle/refund meter of one run;
- ``windows``: the scoped charges a policy's window limits make, and their refusals.

Imports ``corral.policy`` (types), ``corral.stores`` (scoped charges) and the top-level modules.
"""
