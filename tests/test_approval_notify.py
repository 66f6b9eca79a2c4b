"""New pending approval requests announced to ``approvals.notify_url``: a signed JSON POST
to a real HTTP receiver, once per request, never in the run's way (no secret, a receiver
that is down or failing)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.controls import approvals
from corral.record.notify import NOTIFIER, signature
from corral.stores.sqlite import SQLiteStore

SECRET = "s3cret-for-tests"


class Receiver:
    """An HTTP server on 127.0.0.1 recording what it is posted; it answers ``status``."""

    def __init__(self, status: int = 204) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def policy(url: str) -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["refund.send"]},
            "writes": {"require_approval": True, "approval_timeout_seconds": 20},
            "approvals": {"notify_url": url, "notify_timeout_seconds": 2},
        }
    )


def refund_tool() -> corral.Tool:
    return corral.tool(
        lambda amount, api_key="": f"sent {amount}", name="refund.send", effect="write"
    )


def run_and_approve(store: SQLiteStore, pol: corral.Policy, args: dict[str, Any]) -> Any:
    """A run calling refund.send once, approved by another thread when it is pending."""
    done: dict[str, Any] = {}

    def agent() -> None:
        with corral.Run(pol, tools=[refund_tool()], store=store, tenant="acme") as run:
            done["out"] = run.call("refund.send", args)

    thread = threading.Thread(target=agent)
    thread.start()
    deadline = time.monotonic() + 20
    while not (pending := store.list_approvals()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    approvals.approve(store, pending[0].id, approver="ann")
    thread.join(20)
    return done.get("out"), pending[0]


def test_each_new_request_is_posted_once_signed(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_APPROVALS_SECRET", SECRET)
    store = SQLiteStore(str(tmp_path / "c.db"))
    try:
        out, request = run_and_approve(
            store, policy(receiver.url), {"amount": 5, "api_key": "sk-live-abcdef123456"}
        )
        assert out == "sent 5"
        assert NOTIFIER.drain()
    finally:
        store.close()
    assert len(receiver.posts) == 1
    headers, body = receiver.posts[0]
    stamp = headers["x-corral-timestamp"]
    expected = (
        "sha256="
        + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    assert hmac.compare_digest(headers["x-corral-signature"], expected)
    assert headers["x-corral-signature"] == signature(SECRET, stamp, body)
    assert abs(int(stamp) - time.time()) < 60
    sent = json.loads(body)
    assert sent["type"] == "approval.pending"
    assert sent["approval"]["id"] == request.id and sent["approval"]["status"] == "pending"
    assert sent["approval"]["tenant"] == "acme" and sent["approval"]["arguments"]["amount"] == 5
    assert "sk-live-abcdef123456" not in body.decode()  # redacted as stored


def test_without_the_secret_nothing_is_sent_and_the_run_goes_on(
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("CORRAL_APPROVALS_SECRET", raising=False)
    store = SQLiteStore(str(tmp_path / "c.db"))
    try:
        out, _ = run_and_approve(store, policy(receiver.url), {"amount": 1})
        assert NOTIFIER.drain()
    finally:
        store.close()
    assert out == "sent 1" and receiver.posts == []
    assert any("CORRAL_APPROVALS_SECRET is empty" in r.getMessage() for r in caplog.records) or (
        "CORRAL_APPROVALS_SECRET" in NOTIFIER._warned
    )


def test_a_failing_or_missing_receiver_never_touches_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_APPROVALS_SECRET", SECRET)
    monkeypatch.setattr("corral.record.notify.FIRST_PAUSE", 0.01)
    failing = Receiver(status=500)
    store = SQLiteStore(str(tmp_path / "c.db"))
    try:
        failed_before = NOTIFIER.failed
        out, _ = run_and_approve(store, policy(failing.url), {"amount": 2})
        assert out == "sent 2"
        assert NOTIFIER.drain()
        assert len(failing.posts) == 3 and NOTIFIER.failed == failed_before + 1  # three tries
        failing.close()
        out, _ = run_and_approve(store, policy(failing.url), {"amount": 3})  # nobody listens
        assert out == "sent 3"
        assert NOTIFIER.drain()
    finally:
        store.close()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/hook", " http://x", "http://"])
def test_a_notify_url_must_be_http(url: str) -> None:
    with pytest.raises(corral.PolicyError, match="notify_url"):
        corral.Policy.from_dict({"approvals": {"notify_url": url}})
    with pytest.raises(corral.PolicyError, match="notify_secret_env"):
        corral.Policy.from_dict({"approvals": {"notify_secret_env": "NOT A NAME"}})
