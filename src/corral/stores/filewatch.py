"""Whether a SQLite store's files are still the ones it opened.

A process holding a SQLite file open keeps using it after the file is removed,
renamed away or replaced: its writes (the audit log among them) go to a file nobody
else reads, and a kill switch set on the file now at that path never reaches it.
:class:`FileWatch` records the identity (``st_dev``, ``st_ino``) of the database file
and of its ``-wal`` and ``-shm`` files when the store connects; :meth:`FileWatch.change`
says what changed since. The SQLite store checks it on each kill-switch read and each
heartbeat (both periodic, a few ``stat`` calls) and, once something changed, fails
every later call (:class:`~corral.exceptions.StoreGone`).
"""

from __future__ import annotations

import os

_Identity = tuple[int, int]

#: The files of one SQLite database in WAL mode, by suffix.
SUFFIXES = ("", "-wal", "-shm")


def identity(path: str) -> _Identity | None:
    """``(st_dev, st_ino)`` of ``path``, or ``None`` when nothing can be found there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # gone, a removed directory, unreadable, a bad name
        return None
    return (st.st_dev, st.st_ino)


class FileWatch:
    """The identities of a database's files as its store opened them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._known: dict[str, _Identity | None] = {}

    @property
    def recorded(self) -> bool:
        return bool(self._known)

    def record(self) -> None:
        """Remember the files as they are now (call once connected)."""
        self._known = {suffix: identity(self.path + suffix) for suffix in SUFFIXES}

    def change(self) -> str | None:
        """What happened to the files since :meth:`record` (``was removed or renamed``,
        ``was replaced by another file``), or ``None`` while they are the same. A ``-wal``
        or ``-shm`` file that did not exist when recorded is recorded when it appears."""
        for suffix, was in self._known.items():
            now = identity(self.path + suffix)
            if was is None:
                if now is not None:
                    self._known[suffix] = now  # created since (SQLite makes them on demand)
                continue
            if now == was:
                continue
            what = f"the store file {self.path}" + (f" (its {suffix} file)" if suffix else "")
            if now is None:
                return f"{what} was removed or renamed"
            return f"{what} was replaced by another file"
        return None
