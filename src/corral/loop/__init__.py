"""The run, as its callers drive it.

- ``bounded``: ``corral.run`` / ``corral.arun``, the bounded agent loop;
- ``run``: ``Run`` / ``AsyncRun``, governing a loop you already have;
- ``tickets``: work the caller does itself (an authorized tool call, its own model call);
- ``context``: the pinned policy prompt and context trimming.

Sits above the gateway: imports ``corral.gateway`` and everything below it.
"""
