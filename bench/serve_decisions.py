"""HTTP decisions through ``corral serve``: authorize + report round trips per second and
their latency over real sockets, against a bare endpoint of the same server in the same run.

Starts ``corral serve`` in a subprocess (its own interpreter, as in production) on a
temporary SQLite file (or ``--db URL``) with a policy describing one read tool and an
agent key, then drives it from this process with ``--clients`` threads, each with its own
keep-alive HTTP connection, paced to a total of ``--rate`` decisions a second (an iteration
that starts over 1 ms after it was due is counted as late: the rate was not kept up):

- ``bare``: ``GET /healthz`` — the server's floor (HTTP, routing, JSON), timed in the same
  iterations, under the same load;
- ``authorize``: ``POST /v1/runs/{id}/tool-calls`` — a decision (the gateway, the store);
- ``report``: ``POST .../report`` of the ticket — settlement, output checks, the event.

Each client drives its own run (a run is held by one server process and serves one agent's
calls in order). Printed: p50/p99 of each in milliseconds, the decisions a second achieved
and the ratio of a decision's p50 to the bare endpoint's. Targets (DESIGN.md): a decision
p50 <= 1 ms and p99 <= 5 ms at 1,000 decisions a second on SQLite. The client side shares
the machine (2 cores here): the figures include its own cost.

    python bench/serve_decisions.py [--seconds 10] [--rate 1000] [--clients 8] [--db URL]
                                    [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from corral.controls.keys import create_key
from corral.stores import open_store

POLICY = """\
tools:
  allow: [kb.read]
  specs:
    kb.read:
      effect: read
      cache: false
      args_schema: {type: object, properties: {q: {type: string}}, required: [q]}
budgets: {max_tool_calls: 1000000000, max_steps: 1000000000, max_seconds: 1000000}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(db: str, policy_dir: Path, port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "corral", "serve", "--db", db, "--port", str(port)]
    command += ["--policy-dir", str(policy_dir), "--log-level", "warning"]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"corral serve did not start: {server.communicate()[1]}")
        time.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Client(threading.Thread):
    """One agent: its own connection and run, paced at ``rate`` decisions a second."""

    def __init__(self, url: str, key: str, rate: float, until: float, n: int) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.rate = rate
        self.until = until
        self.n = n
        self.times: dict[str, list[float]] = {"bare": [], "authorize": [], "report": []}
        self.decisions = 0
        self.errors = 0
        self.late = 0  # iterations that started over 1 ms after they were due

    def run(self) -> None:
        run_id = self.http.post("/v1/runs", json={"policy": "bench"}).json()["run_id"]
        gap = 1.0 / self.rate
        clock = time.perf_counter
        due = clock() + gap * (self.n % 10) / 10  # spread the clients' starts
        i = 0
        while due < self.until:
            wait = due - clock()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.001:
                self.late += 1
            i += 1
            body = {"tool": "kb.read", "arguments": {"q": f"{self.n}-{i}"}}
            t0 = clock()
            self.http.get("/healthz")
            t1 = clock()
            answer = self.http.post(f"/v1/runs/{run_id}/tool-calls", json=body).json()
            t2 = clock()
            if answer.get("decision") != "allow":
                self.errors += 1
                break
            self.http.post(
                f"/v1/runs/{run_id}/tool-calls/{answer['ticket']}/report", json={"output": "up"}
            )
            t3 = clock()
            self.times["bare"].append(t1 - t0)
            self.times["authorize"].append(t2 - t1)
            self.times["report"].append(t3 - t2)
            self.decisions += 1
            due += gap
        self.http.post(f"/v1/runs/{run_id}/end", json={})
        self.http.close()


def bare_times(url: str, n: int) -> list[float]:
    with httpx.Client(base_url=url) as http:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            http.get("/healthz")
            out.append(time.perf_counter() - t0)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0, help="decisions a second, in all")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--db", help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args()
    if opts.quick:
        opts.seconds, opts.rate, opts.clients = 1.0, 50.0, 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "policies").mkdir()
        (folder / "policies" / "bench.yaml").write_text(POLICY)
        db = opts.db or f"sqlite:///{folder / 'serve.db'}"
        store = open_store(db, create=True)
        key = create_key(store, tenant="bench", role="agent", name="bench", actor="bench").token
        store.close()
        port = free_port()
        server = start_server(db, folder / "policies", port)
        url = f"http://127.0.0.1:{port}"
        try:
            bare_times(url, 200)  # warm up
            until = time.perf_counter() + opts.seconds
            clients = [
                Client(url, key, opts.rate / opts.clients, until, n) for n in range(opts.clients)
            ]
            started = time.perf_counter()
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(10)
    figures = summarize(clients, elapsed, opts)
    if opts.json:
        print(json.dumps(figures, indent=2))
    else:
        show(figures)
    return 1 if figures["errors"] else 0


def summarize(clients: list[Client], elapsed: float, opts: Any) -> dict[str, Any]:
    bare = [t for c in clients for t in c.times["bare"]]
    auth = [t for c in clients for t in c.times["authorize"]]
    report = [t for c in clients for t in c.times["report"]]
    pair = [
        a + r for c in clients for a, r in zip(c.times["authorize"], c.times["report"], strict=True)
    ]
    ms = 1000.0
    out = {
        "store": "sqlite" if not opts.db else opts.db.split(":", 1)[0],
        "clients": opts.clients,
        "rate_asked": opts.rate,
        "decisions": sum(c.decisions for c in clients),
        "decisions_per_s": round(sum(c.decisions for c in clients) / elapsed, 1),
        "errors": sum(c.errors for c in clients),
        "late": sum(c.late for c in clients),
        "bare_p50_ms": round(pct(bare, 0.5) * ms, 3),
        "bare_p99_ms": round(pct(bare, 0.99) * ms, 3),
        "authorize_p50_ms": round(pct(auth, 0.5) * ms, 3),
        "authorize_p99_ms": round(pct(auth, 0.99) * ms, 3),
        "report_p50_ms": round(pct(report, 0.5) * ms, 3),
        "report_p99_ms": round(pct(report, 0.99) * ms, 3),
        "authorize_and_report_p50_ms": round(pct(pair, 0.5) * ms, 3),
    }
    out["authorize_over_bare_p50"] = (
        round(out["authorize_p50_ms"] / out["bare_p50_ms"], 2) if out["bare_p50_ms"] else None
    )
    return out


def show(f: dict[str, Any]) -> None:
    print(
        f"corral serve on {f['store']}: {f['clients']} clients, "
        f"{f['rate_asked']:.0f} decisions/s asked, "
        f"{f['decisions_per_s']:.0f}/s done ({f['decisions']} decisions, {f['late']} late, "
        f"{f['errors']} errors)"
    )
    print(f"  bare GET /healthz   p50 {f['bare_p50_ms']:.3f} ms   p99 {f['bare_p99_ms']:.3f} ms")
    print(
        f"  authorize           p50 {f['authorize_p50_ms']:.3f} ms   "
        f"p99 {f['authorize_p99_ms']:.3f} ms"
        f"   ({f['authorize_over_bare_p50']}x the bare endpoint)   target p50 <= 1, p99 <= 5"
    )
    print(
        f"  report              p50 {f['report_p50_ms']:.3f} ms   p99 {f['report_p99_ms']:.3f} ms"
    )
    print(f"  authorize + report  p50 {f['authorize_and_report_p50_ms']:.3f} ms")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
