"""The lease renewer: live holders renew, released and forked-away leases stop."""

from __future__ import annotations

import os
import threading
import time

import pytest

from corral.stores.leases import Renewer


def test_a_held_lease_is_renewed_by_the_thread_until_released() -> None:
    """The renewer's thread calls a held lease's renewal every interval, and stops on release."""
    renewer = Renewer(interval=0.01)
    seen: list[float] = []
    renewed = threading.Event()

    def renew(now: float) -> None:
        seen.append(now)
        if len(seen) >= 3:
            renewed.set()

    held = renewer.hold(renew)
    assert renewed.wait(5), "the lease was not renewed three times within 5 s"
    held.release()
    count = len(seen)
    time.sleep(0.1)
    assert len(seen) <= count + 1  # at most one tick was already under way
    assert renewer.held == 0
    assert all(abs(now - time.time()) < 60 for now in seen)  # wall-clock seconds


def test_a_failing_renewal_is_retried_and_does_not_stop_the_others() -> None:
    """A renewal that raises is counted and tried again; other leases keep being renewed."""
    renewer = Renewer(interval=3600)
    good: list[float] = []
    calls = 0

    def bad(now: float) -> None:
        nonlocal calls
        calls += 1
        raise OSError("store unreachable")

    with renewer.hold(bad), renewer.hold(good.append):
        renewer.tick()
        renewer.tick()
    assert calls == 2 and len(good) == 2 and renewer.failures == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_holds_none_of_its_parents_leases() -> None:
    """A child process starts with no leases: it must not keep its parent's alive."""
    renewer = Renewer(interval=3600)
    with renewer.hold(lambda now: None):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.write(write, str(renewer.held).encode())
            os._exit(0)
        os.close(write)
        held_in_child = os.read(read, 16).decode()
        os.close(read)
        os.waitpid(pid, 0)
        assert renewer.held == 1
    assert held_in_child == "0"
