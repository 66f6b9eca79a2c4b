"""Degrade state: a tool whose breaker is open is not called.

The breaker's state lives in the store, so every process sharing it agrees. This
guard only reads it; recording outcomes and opening the breaker belongs to the
breaker policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import Stop

if TYPE_CHECKING:
    from ..runtime import RunCore


def check(core: RunCore, name: str) -> None:
    state = core._store_call(core.store.breaker, name, now=core.now())
    if state.state == "open":
        raise core.stamp(
            Stop(
                "dependency_degraded",
                name,
                tool=name,
                retry_after=max(0.0, state.until - core.now()),
                message=f"{name} is degraded (breaker open)",
            )
        )
