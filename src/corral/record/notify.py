"""Announcing new pending approval requests: a signed JSON POST to the policy's
``approvals.notify_url`` for each request a run files, so that approvers need not poll.

The body is ``{"type": "approval.pending", "approval": row}`` (the row of
:func:`corral.record.views.approval_row`: arguments redacted as stored). It is signed with
HMAC-SHA256 under the secret in the environment variable ``approvals.notify_secret_env``::

    X-Corral-Timestamp: 1733450000
    X-Corral-Signature: sha256=<hex of HMAC(secret, "<timestamp>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
constant time and refuses old timestamps (replays). Without the secret nothing is sent
(an unsigned announcement could be forged by anyone; it is logged once). Posts are made by
one daemon thread per process, in order, each with the policy's timeout and up to three
tries; a failure is logged and never touches the run: the request is in the store either
way, where ``corral approvals``, the API and the dashboard find it.

Imports the record's views and the stores' records; httpx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.record.views import approval_row
from corral.stores.base import ApprovalRecord

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("corral")

#: Announcements waiting to be posted, at most (more are dropped, and logged).
BACKLOG = 1000
#: Tries per announcement, and the pause before the second (doubling).
TRIES = 3
FIRST_PAUSE = 0.5


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Corral-Signature`` of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True, slots=True)
class Announcement:
    url: str
    secret: str
    timeout: float
    body: bytes


class Notifier:
    """The process's announcer: a queue and the thread that posts from it."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Announcement] = queue.Queue(BACKLOG)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()
        self.sent = 0
        self.failed = 0

    def announce(self, url: str, secret_env: str, timeout: float, record: ApprovalRecord) -> bool:
        """Queue the announcement of ``record``; ``False`` when it cannot be sent (no
        secret) or the backlog is full."""
        secret = os.environ.get(secret_env, "")
        if not secret:
            if secret_env not in self._warned:
                self._warned.add(secret_env)
                log.error(
                    "approvals.notify_url is set but %s is empty: new approval requests are "
                    "not announced (an unsigned announcement could be forged)",
                    secret_env,
                )
            return False
        body = json.dumps(
            {"type": "approval.pending", "approval": approval_row(record)},
            separators=(",", ":"),
            sort_keys=True,
            default=str,
        ).encode("utf-8")
        try:
            self._queue.put_nowait(Announcement(url, secret, timeout, body))
        except queue.Full:
            log.error(
                "approval %s not announced: %d announcements wait already", record.id, BACKLOG
            )
            return False
        self._start()
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="corral-notify", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        import httpx  # only once there is something to announce: runs without it never load it

        with httpx.Client() as http:
            while True:
                item = self._queue.get()
                try:
                    self._post(http, item)
                finally:
                    self._queue.task_done()

    def _post(self, http: httpx.Client, item: Announcement) -> None:
        pause = FIRST_PAUSE
        for attempt in range(1, TRIES + 1):
            stamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Corral-Timestamp": stamp,
                "X-Corral-Signature": signature(item.secret, stamp, item.body),
            }
            try:
                response = http.post(
                    item.url, content=item.body, headers=headers, timeout=item.timeout
                )
                if response.is_success:
                    self.sent += 1
                    return
                why = f"HTTP {response.status_code}"
            except Exception as exc:  # httpx's errors, and anything else: logged, never raised
                why = f"{type(exc).__name__}: {exc}"
            if attempt < TRIES:
                time.sleep(pause)
                pause *= 2
        self.failed += 1
        log.warning("an approval announcement to %s failed %d times (%s)", item.url, TRIES, why)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every queued announcement was posted or given up (for tests and
        orderly exits); whether it emptied in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


#: The process's notifier.
NOTIFIER = Notifier()
