"""``corral serve``'s application over real sockets for tests: uvicorn in a thread on a
free port, stopped on leaving."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping

import uvicorn

from corral.controls.keys import create_key
from corral.server import create_app
from corral.stores.base import ApprovalRecord, Store


@contextlib.contextmanager
def serving(store: Store, *, start_within: float = 20.0) -> Iterator[str]:
    """Serve :func:`create_app` over ``store`` on 127.0.0.1; yields its base URL."""
    config = uvicorn.Config(create_app(store), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_within
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def make_keys(store: Store, made: Mapping[str, tuple[str | None, str]]) -> dict[str, str]:
    """A key per ``name: (tenant, role)``, named ``name``; their tokens by name."""
    return {
        name: create_key(store, tenant=tenant, role=role, name=name, actor="test").token
        for name, (tenant, role) in made.items()
    }


def first_pending(store: Store, *, within: float = 20.0) -> ApprovalRecord:
    """The first pending approval in ``store``, waited for; AssertionError after ``within``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = store.list_approvals()
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("no approval became pending")
