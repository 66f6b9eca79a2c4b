"""The tool gateway: the single choke point every tool (and model) call passes.

- ``chain``: the flow of one tool call through the guards, in DESIGN.md's order;
- ``guards/``: one check per file (kill switch, allowlist, arguments, degrade, loop detection,
  cache, idempotency, approval, ...);
- ``state``: the run's state the guards read and write;
- ``model_turn``: one governed model call (reserve, call, settle);
- ``drivers``: the sync and async drivers that do the waiting (with ``_inline``, ``_workers``,
  ``_aio``, ``_runner``, ``_escapes``);
- ``hygiene``, ``_outputs``, ``_jsonable``: what the model may see of an output.

Imports ``corral.controls``, ``corral.record``, ``corral.budgets``, ``corral.policy``,
``corral.models``, ``corral.stores`` and the top-level modules; never ``corral.loop``.
"""
