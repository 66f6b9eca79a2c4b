"""Kill switches in the SQLite file (the kill-switch concern).

A switch's change and its audit record are written in one ``BEGIN IMMEDIATE``
transaction. Reading the switches (every ``REFRESH_SECONDS`` in a process that runs
agents) is also when the store looks whether its file is still there.
"""

from __future__ import annotations

import time

from corral.stores.records import Event, KillScope, KillSwitchState
from corral.stores.rules import checked_switch, kill_target
from corral.stores.sqlite.audit import append
from corral.stores.sqlite.connection import SQLiteConnection
from corral.stores.sqlite.sql import CLEAR_KILL_SWITCH, KILL_SWITCHES, SET_KILL_SWITCH


class KillSwitches(SQLiteConnection):
    """The kill-switch part of :class:`~corral.stores.sqlite.SQLiteStore`."""

    def kill_switches(self) -> list[KillSwitchState]:
        self._check_file()  # read every REFRESH_SECONDS by each process: the periodic check
        with self._locked() as conn:
            rows = conn.execute(KILL_SWITCHES).fetchall()
        return [
            KillSwitchState(
                scope=r[0], target=r[1], mode=r[2], reason=r[3], actor=r[4], set_at=r[5]
            )
            for r in rows
        ]

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        with self._write() as conn:
            conn.execute(
                SET_KILL_SWITCH,
                (
                    switch.scope,
                    switch.target,
                    switch.mode,
                    switch.reason,
                    switch.actor,
                    time.time(),
                ),
            )
            if audit is not None:
                append(conn, self._sealer, [audit])

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)
        with self._write() as conn:
            cur = conn.execute(CLEAR_KILL_SWITCH, (scope, target))
            cleared = cur.rowcount > 0
            if cleared and audit is not None:
                append(conn, self._sealer, [audit])
            return cleared
