"""Who is running a run, and whether that process still lives.

A run left ``running`` by a process that died (SIGKILL, power loss, OOM) must not
look alive for ever. Every run row names its owner: host, process id, and what
makes that id unambiguous. A store judges a ``running`` run as follows:

- **same node** (this kernel and pid namespace, so process ids mean the same thing
  here): the operating system answers. The run is interrupted when its process no
  longer exists, is a zombie, or is another process that reused the id (its start
  time differs);
- **another node** (another machine, or a container with its own pid namespace):
  only the run's heartbeat can tell. The run is interrupted when no write renewed
  it for ``lease`` seconds.

>>> me = RunOwner.current()
>>> me.alive(), interruption(me, heartbeat_at=0.0, now=1e9, lease=60.0)
(True, None)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

#: How long a run on another node may go without a heartbeat before it counts as
#: interrupted. Longer than any wait a live run makes without writing (an approval
#: waits 15 min by default).
RUN_LEASE_SECONDS = 3600.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOwner:
    """The process running a run.

    ``node`` names the kernel boot and pid namespace (the hostname where the OS
    says no more), so two owners with the same node share one process table.
    ``started`` is the process's start time as the OS reports it (``""`` where it
    is not available), which tells a reused process id from the original.
    """

    host: str
    pid: int
    node: str = ""
    started: str = ""

    @classmethod
    def current(cls) -> RunOwner:
        """This process (computed once per process)."""
        global _CURRENT
        pid = os.getpid()
        if _CURRENT is None or _CURRENT.pid != pid:
            _CURRENT = cls(host=socket.gethostname(), pid=pid, node=_node(), started=_started(pid))
        return _CURRENT

    def alive(self) -> bool | None:
        """Whether the process still runs; ``None`` when it cannot be told from here."""
        me = RunOwner.current()
        if not self.node or self.node != me.node:
            return None
        if self.pid == me.pid:
            return self.started == me.started
        return _pid_alive(self.pid, self.started)

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


_CURRENT: RunOwner | None = None


def interruption(
    owner: RunOwner | None, *, heartbeat_at: float | None, now: float, lease: float
) -> str | None:
    """Why a ``running`` run counts as interrupted, or ``None`` while it may be alive."""
    alive = owner.alive() if owner is not None else None
    if alive is True:
        return None
    if alive is False:
        return f"its process ({owner}) is no longer running"
    if heartbeat_at is not None and now - heartbeat_at > lease:
        who = f" from {owner}" if owner is not None else ""
        return f"no heartbeat{who} for {now - heartbeat_at:.0f} s (lease {lease:g} s)"
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _node() -> str:
    host = socket.gethostname()
    if os.name == "nt":
        return ""  # no signal-0 probe on Windows: other processes are judged by their lease
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return "/".join(part for part in (host, boot, namespace) if part)


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (``[]`` where absent)."""
    text = _read(f"/proc/{pid}/stat")
    return text.rpartition(")")[2].split() if text else []


def _started(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if len(fields) > 19 else ""  # field 22: start time in clock ticks


def _pid_alive(pid: int, started: str) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # dead, not yet reaped by its parent
    return not (started and fields and len(fields) > 19 and fields[19] != started)
