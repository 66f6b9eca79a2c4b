"""``corral serve``'s application on a real socket for tests: uvicorn in a thread on a free
port of 127.0.0.1, and API keys of two tenants and a global admin."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.controls.keys import create_key
from corral.server import create_app
from corral.stores.base import ApprovalRecord, Store

#: The keys every served app gets: name -> (tenant, role).
KEYS = {
    "acme-agent": ("acme", "agent"),
    "acme-approver": ("acme", "approver"),
    "acme-admin": ("acme", "admin"),
    "beta-agent": ("beta", "agent"),
    "beta-approver": ("beta", "approver"),
    "beta-admin": ("beta", "admin"),
    "root": (None, "admin"),
}


@dataclass
class Served:
    store: Store
    url: str
    keys: dict[str, str]
    app: Any

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)


@contextmanager
def serving(store: Store, **app_options: Any) -> Iterator[Served]:
    """``create_app(store, **app_options)`` served until the block ends."""
    import uvicorn

    app = create_app(store, **app_options)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    keys = make_keys(store, KEYS)
    try:
        yield Served(store, f"http://127.0.0.1:{port}", keys, app)
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


def file_request(
    store: Store, approval_id: str, tenant: str, *, run_id: str | None = None
) -> ApprovalRecord:
    """A pending approval request of ``tenant`` for refund.send, filed straight into the
    store (as a waiting run would), expiring in 10 minutes."""
    now = time.time()
    record = ApprovalRecord(
        id=approval_id,
        run_id=run_id or f"run_{approval_id}",
        tool="refund.send",
        args_digest="d",
        arguments={"amount": 1},
        tenant=tenant,
        agent="bot",
        created=now,
        expires=now + 600,
    )
    store.create_approval(record)
    return record


def csrf(html: str) -> str:
    """The CSRF token a dashboard page carries in its forms."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def login(http: httpx.Client, token: str) -> str:
    """Log ``http`` in to the dashboard with ``token``; the CSRF token of its session."""
    page = http.get("/ui/login")
    assert page.status_code == 200
    done = http.post("/ui/login", data={"csrf": csrf(page.text), "key": token})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/ui/runs"
    return csrf(http.get("/ui/runs").text)


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve_process(db: str, policies: Path) -> tuple[str, subprocess.Popen[str]]:
    """``corral serve`` over ``db`` with the policies of ``policies``, in a process of its
    own on a free port (its address advertised by default), waited for until ready; its URL
    and process."""
    port = free_port()
    command = [sys.executable, "-m", "corral", "serve", "--db", db, "--port", str(port)]
    command += ["--policy-dir", str(policies), "--log-level", "warning"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"a replica did not start: {proc.communicate()[1]}")
        time.sleep(0.1)
