"""Kill switches in PostgreSQL (the kill-switch concern).

Setting or clearing a switch is one statement that also sends ``NOTIFY
corral_kill_switch`` (``scope:target``); with an audit record, the change and the
record are written in one transaction that holds the audit chain's head.
"""

from __future__ import annotations

import time

from corral.stores.postgres.audit import append_locked
from corral.stores.postgres.connection import Conn, PostgresConnection
from corral.stores.postgres.sql import CLEAR_KILL_SWITCH, KILL_SWITCHES, LOCK_HEAD, SET_KILL_SWITCH
from corral.stores.records import Event, KillScope, KillSwitchState
from corral.stores.rules import checked_switch, kill_target


class KillSwitches(PostgresConnection):
    """The kill-switch part of :class:`~corral.stores.postgres.PostgresStore`."""

    def kill_switches(self) -> list[KillSwitchState]:
        rows = self._call(lambda conn: conn.execute(KILL_SWITCHES).fetchall())
        return [
            KillSwitchState(
                scope=r[0], target=r[1], mode=r[2], reason=r[3], actor=r[4], set_at=float(r[5])
            )
            for r in rows
        ]

    def set_kill_switch(self, switch: KillSwitchState, *, audit: Event | None = None) -> None:
        switch = checked_switch(switch)
        params = (switch.scope, switch.target, switch.mode, switch.reason, switch.actor)
        if audit is None:
            self._call(lambda conn: conn.execute(SET_KILL_SWITCH, params))
            return

        def op(conn: Conn) -> None:
            with conn.transaction():  # the switch and its audit record, or neither
                conn.execute(SET_KILL_SWITCH, params)
                self._head = append_locked(
                    conn, self._sealer, [audit], time.time(), conn.execute(LOCK_HEAD).fetchone()
                )

        self._call(op, once=True)  # sent twice, the change would be audited twice

    def clear_kill_switch(
        self, scope: KillScope, target: str = "", *, audit: Event | None = None
    ) -> bool:
        target = kill_target(scope, target)

        def op(conn: Conn) -> bool:
            with conn.transaction():  # the clearing and its audit record, or neither
                if conn.execute(CLEAR_KILL_SWITCH, (scope, target)).fetchone() is None:
                    return False
                if audit is not None:
                    head = conn.execute(LOCK_HEAD).fetchone()
                    self._head = append_locked(conn, self._sealer, [audit], time.time(), head)
                return True

        # Sent twice, the second would report "was not set".
        return self._call(op, once=True)
