"""Run owners: telling a live process from a dead one, or one that reused its id."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from corral.stores.owner import RunOwner, interruption

linux_only = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")


def test_this_process_is_alive() -> None:
    """The current owner is alive, and its run is never judged interrupted."""
    me = RunOwner.current()
    assert me.pid == os.getpid() and me.alive() is True
    assert interruption(me, heartbeat_at=0.0, now=1e12, lease=1.0) is None


def test_an_exited_process_is_dead() -> None:
    """A process that exited (and was reaped) on this machine is not alive."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    me = RunOwner.current()
    gone = RunOwner(host=me.host, node=me.node, pid=child.pid)
    assert gone.alive() is False
    why = interruption(gone, heartbeat_at=None, now=0.0, lease=60.0)
    assert why is not None and f"pid {child.pid}" in why


@linux_only
def test_a_reused_process_id_is_told_apart_by_its_start_time() -> None:
    """Same pid, different start time: the owner was an earlier process, now dead."""
    me = RunOwner.current()
    assert me.started
    parent = RunOwner(host=me.host, node=me.node, pid=os.getppid(), started="")
    assert parent.alive() is True
    assert RunOwner(host=me.host, node=me.node, pid=me.pid, started="1").alive() is False
    assert RunOwner(host=me.host, node=me.node, pid=os.getppid(), started="1").alive() is False


def test_an_owner_on_another_node_is_judged_by_its_heartbeat() -> None:
    """Elsewhere the OS cannot tell: the run is interrupted once its lease has lapsed."""
    far = RunOwner(host="elsewhere", node="elsewhere/boot", pid=os.getpid())
    assert far.alive() is None
    assert interruption(far, heartbeat_at=100.0, now=150.0, lease=60.0) is None
    why = interruption(far, heartbeat_at=100.0, now=200.0, lease=60.0)
    assert why == f"no heartbeat from elsewhere pid {os.getpid()} for 100 s (lease 60 s)"
    assert interruption(None, heartbeat_at=None, now=200.0, lease=60.0) is None
