"""Kill switches in memory (the kill-switch concern)."""

from __future__ import annotations

import time
from dataclasses import replace

from corral.stores.memory.state import MemoryState
from corral.stores.records import Event, KillScope, KillSwitchState
from corral.stores.rules import checked_switch, kill_target


class KillSwitches(MemoryState):
    """The kill-switch part of :class:`~corral.stores.memory.MemoryStore`."""

    def kill_switches(self) -> list[KillSwitchState]:
        with self._lock:
            self._check()
            return list(self._kill.values())

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        with self._lock:
            self._check()
            self._kill[(switch.scope, switch.target)] = replace(switch, set_at=time.time())
            if audit is not None:
                self._append([audit])

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)
        with self._lock:
            self._check()
            cleared = self._kill.pop((scope, target), None) is not None
            if cleared and audit is not None:
                self._append([audit])
            return cleared
