"""The policy: what a run may do, loaded from YAML, JSON or a dict and validated strictly.

- ``schema``: the policy model and its loading (every section re-exported);
- ``sections``: the sections (tool specs, constraints, budgets, window limits, modes...);
- ``fields``: names, option sets and checked field types the sections are built from;
- ``_input``: bounds on what is read (size, depth, numbers, YAML aliases) before validation;
- ``_yaml``: YAML parsed under those bounds (PyYAML imported when a YAML policy is read);
- ``messages``: one line per problem, with its path (``budgets.max_steps: ...``);
- ``readiness`` and ``decision_aid``: ``corral check``'s checklist and per-tool needs;
- ``patterns``, ``hostnames``: the bounded regular expressions and host names a policy holds.

Imports only ``corral.exceptions``, ``corral._safe`` and its own modules.
"""

from corral.policy.schema import (
    ArgConstraint,
    Budgets,
    Degrade,
    Guard,
    KillSwitch,
    Loops,
    Policy,
    ToolSpec,
    WindowLimit,
    Writes,
    load_policy,
)

__all__ = [
    "ArgConstraint",
    "Budgets",
    "Degrade",
    "Guard",
    "KillSwitch",
    "Loops",
    "Policy",
    "ToolSpec",
    "WindowLimit",
    "Writes",
    "load_policy",
]
