"""A SQLite connection across ``fork``: this process's id, and the connections never closed.

SQLite forbids using or closing in a forked child a connection its parent opened: a store
object compares :attr:`Process.pid` (kept current in a child by ``os.register_at_fork``,
so that a store call makes no system call for it) with the id it connected in, and a
child drops the inherited connection into :data:`INHERITED` (never used, never closed) to
open its own. :func:`keep_unclosed` keeps a connection open for good: the one of a store
whose file was removed or replaced (closing it would delete another store's ``-wal``
file by name). Imports nothing of corral.
"""

from __future__ import annotations

import os
import sqlite3

#: Connections inherited through ``fork``: never used or closed in the child (SQLite
#: forbids both), only kept from being garbage-collected, which would close them.
INHERITED: list[sqlite3.Connection] = []


class Process:
    """This process's id, kept current in a forked child (``os.register_at_fork``)."""

    pid = os.getpid()


def _forked_child() -> None:
    Process.pid = os.getpid()


if hasattr(os, "register_at_fork"):  # no fork where it is missing (Windows)
    os.register_at_fork(after_in_child=_forked_child)


def keep_unclosed(conn: sqlite3.Connection) -> None:
    """Keep ``conn`` from ever being closed, even at interpreter exit: one deliberate leak
    per store whose file was lost (see ``SQLiteConnection._check_file``)."""
    import ctypes  # only on this rare path

    INHERITED.append(conn)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
