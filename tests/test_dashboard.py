"""The dashboard of ``corral serve`` (``/ui``): login with a key, sessions and CSRF,
tenants kept apart in every page and chart, hostile text rendered as text (plain HTTP,
httpx); and in headless Chromium through Playwright: an agent waiting for approval
released or stopped from the browser, the kill switch set in the browser stopping a
running agent within 1 s, every page free of console errors, a screenshot of each.

Chromium is Debian's (``/usr/bin/chromium``, ``.ci/run`` installs it); Playwright never
downloads a browser. Without it the browser tests skip, except under CI, where a missing
browser fails. Screenshots go to ``build/screenshots/`` (git-ignored)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("uvicorn", reason="corral serve needs the serve extra")
pytest.importorskip("jinja2", reason="the dashboard needs the serve extra")

import corral
from corral.charts import columns, rows
from corral.controls import killswitch
from corral.controls.keys import authenticate, create_key, revoke_key
from corral.server import create_app
from corral.server.dashboard import figures
from corral.server.dashboard.render import CSP, STATIC, TEMPLATES
from corral.server.dashboard.session import COOKIE, Sessions
from corral.stores.base import ApprovalRecord, RunRecord, Store
from corral.stores.sqlite import SQLiteStore
from serving import csrf, first_pending, login, make_keys, serving

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
HOSTILE = "<script>alert('pwned')</script>"


@dataclass
class Served:
    store: Store
    url: str
    path: Path
    keys: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


#: The keys every test has: (tenant, role) by name.
KEYS: dict[str, tuple[str | None, str]] = {
    "acme-agent": ("acme", "agent"),
    "acme-approver": ("acme", "approver"),
    "acme-admin": ("acme", "admin"),
    "beta-admin": ("beta", "admin"),
    "root": (None, "admin"),
}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    path = tmp_path / "corral.db"
    store = SQLiteStore(str(path))
    try:
        with serving(store) as running:
            yield Served(store, running.url, path, make_keys(store, KEYS))
    finally:
        store.close()


def _read_tool() -> corral.Tool:
    return corral.tool(lambda q: f"read {q}", name="kb.read", effect="read")


def _finished_run(store: Store, tenant: str, agent: str, answer: str = "done") -> str:
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    with corral.Run(policy, tools=[_read_tool()], store=store, tenant=tenant, agent=agent) as run:
        run.call("kb.read", {"q": tenant})
        run.finish(answer)
    return run.id


def _file_approval(store: Store, approval_id: str, tenant: str, arguments: Any) -> None:
    now = time.time()
    store.create_approval(
        ApprovalRecord(
            id=approval_id,
            run_id=f"run_{tenant}_waiting",
            tool="refund.send",
            args_digest="d" * 64,
            arguments=arguments,
            tenant=tenant,
            agent=f"{tenant}-bot",
            created=now,
            expires=now + 600,
            context={"step": 3, "purpose": f"refund the customer {HOSTILE}", "cost_usd": "0.5"},
        )
    )


_csrf = csrf
_login = login


PAGES = (
    "/ui/runs",
    "/ui/runs/rows",
    "/ui/approvals",
    "/ui/approvals/list",
    "/ui/kill",
    "/ui/charts",
)


# -- login and sessions -------------------------------------------------------------------
def test_pages_need_a_login_and_a_session_cookie_is_hardened(served: Served) -> None:
    """Logged out, every page sends the browser to the login form; a wrong key is
    refused; a right one gets an HttpOnly, SameSite=Strict cookie on /ui and the pages
    carry a strict Content-Security-Policy."""
    with served.client() as http:
        assert http.get("/").headers["location"] == "/ui/runs"
        for path in PAGES:
            away = http.get(path)
            assert away.status_code == 303 and away.headers["location"].startswith("/ui/login")
        polled = http.get("/ui/runs/rows", headers={"HX-Request": "true"})
        assert polled.status_code == 200 and polled.headers["hx-redirect"] == "/ui/login"
        login = http.get("/ui/login")
        bad = http.post("/ui/login", data={"csrf": _csrf(login.text), "key": "crl_nope"})
        assert bad.status_code == 401 and "that key is not valid" in bad.text
        done = http.post(
            "/ui/login", data={"csrf": _csrf(bad.text), "key": served.keys["acme-approver"]}
        )
        cookie = done.headers["set-cookie"]
        assert done.status_code == 303 and cookie.startswith(f"{COOKIE}=")
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/ui"):
            assert attribute.lower() in cookie.lower(), cookie
        assert served.keys["acme-approver"].split("_", 2)[2] not in cookie  # never the secret
        for path in PAGES:
            page = http.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-security-policy"] == CSP
            assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
            assert "<script>" not in page.text  # no inline script at all
        csrf = _csrf(http.get("/ui/runs").text)
        out = http.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        assert http.get("/ui/runs").status_code == 303


def test_a_login_starts_a_new_session_and_goes_only_to_a_dashboard_page(served: Served) -> None:
    """The session id changes at login (no fixation), and ``next`` never leaves /ui."""
    with served.client() as http:
        before = http.get("/ui/login?next=/ui/kill")
        anonymous = http.cookies[COOKIE]
        done = http.post(
            "/ui/login",
            data={"csrf": _csrf(before.text), "key": served.keys["root"], "next": "/ui/kill"},
        )
        assert done.headers["location"] == "/ui/kill" and http.cookies[COOKIE] != anonymous
    for target in ("https://evil.example/", "//evil.example/ui", "/ui//evil.example", "/v1/runs"):
        with served.client() as http:
            page = http.get("/ui/login")
            done = http.post(
                "/ui/login",
                data={"csrf": _csrf(page.text), "key": served.keys["root"], "next": target},
            )
            assert done.headers["location"] == "/ui/runs", target


def test_a_revoked_key_logs_its_sessions_out_at_once(served: Served) -> None:
    """The key is read again on every request: revoking it ends its sessions."""
    with served.client() as http:
        _login(http, served.keys["acme-admin"])
        assert http.get("/ui/runs").status_code == 200
        key_id = authenticate(served.store, served.keys["acme-admin"]).key_id
        assert revoke_key(served.store, key_id, actor="test")
        assert http.get("/ui/runs").status_code == 303
        assert http.get("/ui/kill").headers["location"].startswith("/ui/login")


def test_a_forged_or_altered_cookie_is_no_session(served: Served) -> None:
    """A cookie the server did not sign, or one changed by a byte, logs nobody in."""
    with served.client() as http:
        _login(http, served.keys["root"])
        good = http.cookies[COOKIE]
        http.cookies.clear()
        for forged in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), "e30.x.y", ""):
            http.cookies.set(COOKIE, forged, domain="127.0.0.1", path="/ui")
            assert http.get("/ui/runs").status_code == 303, forged
            http.cookies.clear()


def test_sessions_survive_a_restart_only_with_a_shared_secret(monkeypatch: Any) -> None:
    """Two servers with one ``CORRAL_SESSION_SECRET`` accept each other's sessions; a
    random secret is each process's own; a short secret is refused."""
    from starlette.requests import Request

    monkeypatch.setenv("CORRAL_SESSION_SECRET", "s" * 40)
    one, two = Sessions(), Sessions()
    assert not one.ephemeral and one.csrf(one.new()) != one.csrf(one.new())
    session = one.new("0123456789abcdef")
    scope: dict[str, Any] = {"type": "http", "headers": []}
    cookie = one._signer.dumps({"sid": session.sid, "kid": session.key_id})
    scope["headers"] = [(b"cookie", f"{COOKIE}={cookie}".encode())]
    assert two.read(Request(scope)) == session
    assert two.csrf_ok(session, one.csrf(session))
    monkeypatch.delenv("CORRAL_SESSION_SECRET")
    own = Sessions()
    assert own.ephemeral and own.read(Request(scope)) is None
    with pytest.raises(corral.ConfigError, match="at least 32"):
        Sessions("short")


# -- CSRF ---------------------------------------------------------------------------------
def test_a_post_without_its_sessions_csrf_token_changes_nothing(served: Served) -> None:
    """Deciding, switching and logging out need the token of the session they come
    with: none, a made-up one, or another session's is refused (403) and nothing
    changes."""
    _file_approval(served.store, "apr_csrf", "acme", {"amount": 5})
    with served.client() as mine, served.client() as theirs:
        _login(mine, served.keys["acme-admin"])
        other_token = _login(theirs, served.keys["acme-admin"])  # same key, other session
        attempts = [
            ("/ui/approvals/apr_csrf/decide", {"verb": "approve", "reason": "x"}),
            ("/ui/kill", {"scope": "tenant", "target": "acme", "confirm": "yes"}),
            ("/ui/kill/off", {"scope": "tenant", "target": "acme"}),
            ("/ui/logout", {}),
        ]
        for path, fields in attempts:
            for token in (None, "0" * 64, other_token):
                data = fields if token is None else {**fields, "csrf": token}
                refused = mine.post(path, data=data)
                assert refused.status_code == 403, (path, token, refused.text)
                assert "CSRF" in refused.text
        assert mine.get("/ui/runs").status_code == 200  # still logged in
        fresh = httpx.Client(base_url=served.url)
        with fresh:
            page = fresh.get("/ui/login")
            assert fresh.post("/ui/login", data={"key": served.keys["root"]}).status_code == 403
            assert _csrf(page.text) != other_token
    record = served.store.get_approval("apr_csrf")
    assert record is not None and record.status == "pending"
    assert served.store.kill_switches() == []


def test_roles_hold_in_forms_as_in_the_api(served: Served) -> None:
    """With a good token still: an approver cannot turn a switch on, an agent key cannot
    decide, a tenant admin cannot switch another tenant or the whole fleet."""
    _file_approval(served.store, "apr_roles", "acme", {"amount": 5})
    with served.client() as http:
        csrf = _login(http, served.keys["acme-approver"])
        refused = http.post(
            "/ui/kill", data={"csrf": csrf, "scope": "tenant", "target": "acme", "confirm": "yes"}
        )
        assert refused.status_code == 403 and "may not kill.toggle" in refused.text
        assert "Turn the switch on" not in http.get("/ui/kill").text
    with served.client() as http:
        csrf = _login(http, served.keys["acme-agent"])
        refused = http.post(
            "/ui/approvals/apr_roles/decide", data={"csrf": csrf, "verb": "approve"}
        )
        assert refused.status_code == 403
        assert "may not decide" in http.get("/ui/approvals").text
    with served.client() as http:
        csrf = _login(http, served.keys["acme-admin"])
        for scope, target in (("tenant", "beta"), ("global", ""), ("tool", "kb.read")):
            data = {"csrf": csrf, "scope": scope, "target": target, "confirm": "yes"}
            assert http.post("/ui/kill", data=data).status_code == 403, scope
        unconfirmed = {"csrf": csrf, "scope": "tenant", "target": "acme"}
        assert http.post("/ui/kill", data=unconfirmed).status_code == 400
    assert served.store.kill_switches() == []
    record = served.store.get_approval("apr_roles")
    assert record is not None and record.status == "pending"


# -- tenants and hostile text -------------------------------------------------------------
def test_a_tenants_key_never_sees_another_tenants_runs_approvals_or_figures(
    served: Served,
) -> None:
    """acme's key sees acme's runs, approvals and chart figures only; beta's run page
    answers as missing; the global key sees both."""
    mine = _finished_run(served.store, "acme", "acme-bot")
    theirs = _finished_run(served.store, "beta", "betasecretagent")
    _file_approval(served.store, "apr_acme", "acme", {"amount": 1})
    _file_approval(served.store, "apr_betasecret", "beta", {"amount": 2})
    killswitch.enable(served.store, scope="tenant", target="beta", reason="betasecretreason")
    with served.client() as http:
        _login(http, served.keys["acme-admin"])
        seen = "".join(http.get(path).text for path in PAGES)
        seen += http.get("/ui/runs?tenant=beta").text + http.get("/ui/charts?tenant=beta").text
        assert mine in seen and "apr_acme" in seen
        for secret in (theirs, "betasecretagent", "apr_betasecret", "betasecretreason", "beta"):
            assert secret not in seen, secret
        assert http.get(f"/ui/runs/{theirs}").status_code == 404
        assert http.get(f"/ui/runs/{mine}").status_code == 200
    with served.client() as http:
        _login(http, served.keys["root"])
        seen = http.get("/ui/runs").text + http.get("/ui/charts").text
        assert mine in seen and theirs in seen and "betasecretagent" in seen
        beta_only = http.get("/ui/runs?tenant=beta").text
        assert theirs in beta_only and mine not in beta_only


def test_hostile_text_renders_as_text(served: Served) -> None:
    """A ``<script>`` in a run's answer, an approval's arguments and purpose, a switch's
    reason and a decision's reason shows as text, never as markup."""
    run_id = _finished_run(served.store, "acme", "acme-bot", answer=HOSTILE)
    _file_approval(served.store, "apr_hostile", "acme", {"note": HOSTILE, HOSTILE: 1})
    _file_approval(served.store, "apr_hostile2", "acme", {"amount": 3})
    with served.client() as http:
        csrf = _login(http, served.keys["acme-admin"])
        decided = http.post(
            "/ui/approvals/apr_hostile2/decide",
            data={"csrf": csrf, "verb": "deny", "reason": HOSTILE},
        )
        assert decided.status_code == 303
        queue = http.get("/ui/approvals").text
        assert queue.count("&lt;script&gt;") >= 4  # argument value and key, purpose, reason
        on = {
            "csrf": csrf,
            "scope": "tenant",
            "target": "acme",
            "confirm": "yes",
            "reason": HOSTILE,
            "mode": "disable_writes",
        }
        assert http.post("/ui/kill", data=on).status_code == 303
        for path in (f"/ui/runs/{run_id}", "/ui/approvals", "/ui/kill", "/ui/runs"):
            text = http.get(path).text
            assert "<script>" not in text, path
        assert (
            "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"
            in http.get(f"/ui/runs/{run_id}").text
        )
        assert "&lt;script&gt;" in http.get("/ui/kill").text
        cancelled = served.store.get_approval("apr_hostile")  # the switch covers the write
        assert cancelled is not None and cancelled.status == "cancelled"
    denied = served.store.get_approval("apr_hostile2")
    assert denied is not None and denied.status == "denied" and denied.reason == HOSTILE


def test_the_kill_page_tells_stop_requested_from_stopped(served: Served) -> None:
    """A running run a stop_all switch covers shows as *stop requested*; one the switch
    has stopped, as *stopped*, with its stop's detail."""
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    live = corral.Run(
        policy, tools=[_read_tool()], store=served.store, tenant="acme", agent="live-bot"
    )
    live.call("kb.read", {"q": "still going"})
    with served.client() as http:
        csrf = _login(http, served.keys["acme-admin"])

        def switch_on(target: str) -> None:
            on = {
                "csrf": csrf,
                "scope": "run",
                "target": target,
                "mode": "stop_all",
                "confirm": "yes",
                "reason": "look",
            }
            assert http.post("/ui/kill", data=on).status_code == 303

        switch_on(live.id)
        with corral.Run(
            policy, tools=[_read_tool()], store=served.store, tenant="acme", agent="doomed-bot"
        ) as doomed:
            switch_on(doomed.id)
            doomed.call("kb.read", {"q": "once more"})
        assert doomed.result.stop_reason == "kill_switch"
        page = http.get("/ui/kill").text
    requested = page.split(f'data-target="{live.id}"')[1].split("</article>")[0]
    assert "stop requested" in requested and live.id in requested and "stop_all" in requested
    stopped = page.split("Stopped by a kill switch")[1]
    assert doomed.id in stopped and "stopped" in stopped and live.id not in stopped
    live.finish("done")


def test_a_pending_request_stays_pending_when_a_waiter_gives_up(served: Served) -> None:
    """A long-poll that times out leaves the request in the queue as pending with its
    time left, never among the decided ones as a denial."""
    _file_approval(served.store, "apr_waited", "acme", {"amount": 9})
    api = {"Authorization": f"Bearer {served.keys['acme-agent']}"}
    with served.client() as http:
        waited = http.get("/v1/approvals/apr_waited/wait", params={"timeout": 0.2}, headers=api)
        assert waited.json()["waited_out"] is True
        _login(http, served.keys["acme-approver"])
        queue = http.get("/ui/approvals/list").text
    pending, decided = queue.split("Decided lately")
    assert 'data-approval="apr_waited"' in pending and "left" in pending
    assert "apr_waited" not in decided


def test_filters_find_a_run_older_than_the_newest_page(tmp_path: Path) -> None:
    """Filtering by agent, status or stop reason looks past the newest 200 runs, and the
    time filter keeps only runs started within it."""
    from starlette.testclient import TestClient

    from corral.testing import MemoryStore

    store = MemoryStore()
    token = make_keys(store, {"root": (None, "admin")})["root"]
    store.create_run(
        RunRecord(
            id="run_two_hours_ago",
            tenant="acme",
            agent="needle-bot",
            status="ok",
            stop_reason="ok",
            started_at=time.time() - 7200,
        )
    )
    needle = _finished_run(store, "acme", "needle-bot")
    for _ in range(210):
        _finished_run(store, "acme", "hay-bot")
    with TestClient(create_app(store), base_url="http://127.0.0.1") as http:
        page = http.get("/ui/login")
        http.post("/ui/login", data={"csrf": _csrf(page.text), "key": token})
        assert needle not in http.get("/ui/runs").text  # 200 newer runs come first
        found = http.get("/ui/runs/rows", params={"agent": "needle-bot"}).text
        assert needle in found and "run_two_hours_ago" in found
        assert found.count('class="run"') == 2
        recent = http.get("/ui/runs/rows", params={"agent": "needle-bot", "since": "1h"}).text
        assert needle in recent and "run_two_hours_ago" not in recent
        assert http.get("/ui/runs/rows", params={"since": "15x"}).status_code == 400


def test_the_demo_runs_show_in_the_dashboard(tmp_path: Path) -> None:
    """``corral demo`` then ``corral serve``: the demo's runs are on the runs page."""
    from starlette.testclient import TestClient

    from corral.sim.demo import simulate

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    simulate(seed=7, runs=6, failure_rate=1.0, db=url, run_prefix="run_demo")
    store = SQLiteStore(str(tmp_path / "demo.db"))
    try:
        token = create_key(store, tenant=None, role="admin", name="ops", actor="test").token
        demo_runs = [r.id for r in store.list_runs(limit=100)]
        assert demo_runs and all(r.startswith("run_demo") for r in demo_runs)
        with TestClient(create_app(store), base_url="http://127.0.0.1") as http:
            page = http.get("/ui/login")
            http.post("/ui/login", data={"csrf": _csrf(page.text), "key": token})
            listed = http.get("/ui/runs").text
            assert all(run_id in listed for run_id in demo_runs)
            assert http.get(f"/ui/runs/{demo_runs[0]}").status_code == 200
            assert "Nothing to show yet" not in http.get("/ui/charts").text.split("Denials")[0]
    finally:
        store.close()


def test_the_templates_and_static_files_ship_in_the_package() -> None:
    """The wheel is the package directory (hatch, ``packages = ["src/corral"]``): the
    templates, htmx and its license are files inside it, not beside it."""
    import corral.server.dashboard as dashboard

    package = Path(dashboard.__file__).parent
    assert TEMPLATES.parent == package and STATIC.parent == package
    for name in ("base.html", "runs.html", "run.html", "approvals.html", "kill.html"):
        assert (TEMPLATES / name).is_file(), name
    for name in ("htmx.min.js", "htmx.LICENSE", "dashboard.css", "favicon.svg"):
        assert (STATIC / name).is_file(), name
    assert "Zero-Clause BSD" in (STATIC / "htmx.LICENSE").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'packages = ["src/corral"]' in pyproject
    assert "exclude" not in pyproject.split("[tool.hatch.build.targets.wheel]")[1].split("[")[0]


# -- charts -------------------------------------------------------------------------------
def test_p95_is_the_nearest_rank() -> None:
    """p95 of 1..100 is 95, of one value that value, of nothing 0."""
    assert figures.p95([float(i) for i in range(100, 0, -1)]) == 95.0
    assert figures.p95([0.25]) == 0.25 and figures.p95([]) == 0.0


def test_charts_draw_bars_in_proportion_and_nothing_for_no_data() -> None:
    """Stacked columns grow with their total; horizontal bars with their value; empty
    data is an empty chart, not a division by zero."""
    chart = columns("c", [("a", {"x": 1.0, "y": 1.0}), ("b", {"x": 4.0})])
    heights = {r.title: r.h for r in chart.rects}
    assert heights["b · x: 4"] == pytest.approx(2 * (heights["a · x: 1"] + heights["a · y: 1"]))
    assert [label for _, label in chart.legend] == ["x", "y"]
    bars = rows("r", [("slow", 2.0), ("fast", 0.5), ("none", 0.0)], unit="s")
    assert [t.text for t in bars.texts if t.anchor == "end"] == ["slow", "fast"]
    assert bars.rects[0].w == pytest.approx(4 * bars.rects[1].w)
    assert columns("e", []).empty and rows("e", [("x", 0.0)]).empty


def test_times_read_as_people_say_them() -> None:
    """Latencies and time left: µs, ms, s, minutes, hours; a deadline gone is ``past``."""
    from corral.server.dashboard.render import duration, left

    assert [duration(x) for x in (0.000085, 0.0085, 12.34, 245, 7800)] == [
        "85 µs",
        "8.5 ms",
        "12.3 s",
        "4m 05s",
        "2h 10m",
    ]
    assert left(1000.0, now=755.0) == "4m 05s" and left(1000.0, now=1001.0) == "past"
    assert duration(None) == left(None) == "—"


# -- in the browser -----------------------------------------------------------------------
@dataclass
class Tab:
    page: Any
    errors: list[str]
    url: str

    def login(self, token: str) -> None:
        self.page.goto(f"{self.url}/ui/runs")
        self.page.fill("#key", token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(f"{self.url}/ui/runs")

    def shot(self, name: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def tab(browser: Any, served: Served) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else 0)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        yield Tab(page, errors, served.url)
    finally:
        context.close()


def _approval_policy() -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["refund.send"]},
            "writes": {"require_approval": True, "approval_timeout_seconds": 30},
        }
    )


class Agent(threading.Thread):
    """A governed run of acme's, on its own store object over the served file, doing
    ``work(run)`` until it returns or the run is stopped."""

    def __init__(
        self,
        path: Path,
        policy: corral.Policy,
        tools: list[corral.Tool],
        work: Callable[[corral.Run], Any],
    ) -> None:
        super().__init__(daemon=True)
        self.store = SQLiteStore(str(path))
        self.policy, self.tools, self.work = policy, tools, work
        self.outcome: Any = None
        self.stop_reason: str | None = None
        self.stopped_at: float | None = None

    def run(self) -> None:
        try:
            with corral.Run(
                self.policy, tools=self.tools, store=self.store, tenant="acme", agent="bot"
            ) as run:
                self.outcome = self.work(run)
            self.stop_reason = run.result.stop_reason  # a Stop is recorded and suppressed
        finally:
            self.store.close()


def _refund_agent(served: Served, sent: list[int]) -> Agent:
    def send(amount: int) -> str:
        sent.append(amount)
        return f"sent {amount}"

    tool = corral.tool(send, name="refund.send", effect="write")
    agent = Agent(
        served.path, _approval_policy(), [tool], lambda run: run.call("refund.send", {"amount": 42})
    )
    agent.start()
    return agent


def _decide_in_browser(
    tab: Tab, served: Served, verb: str, reason: str, *, across_a_poll: bool = False
) -> ApprovalRecord:
    request = first_pending(served.store)
    tab.login(served.keys["acme-approver"])
    tab.page.goto(f"{served.url}/ui/approvals")
    card = tab.page.locator(f"article[data-approval='{request.id}']")
    assert "42" in card.locator("pre.arguments").inner_text()
    card.locator("input[name=reason]").fill(reason)
    if across_a_poll:  # the queue reloads itself every 2 s: what is typed stays
        with tab.page.expect_response(lambda r: r.url.endswith("/ui/approvals/list")):
            pass
        tab.page.wait_for_timeout(100)
        assert card.locator("input[name=reason]").input_value() == reason
    card.locator(f"button[value={verb}]").click()
    tab.page.wait_for_url(f"{served.url}/ui/approvals?done={verb}")
    return request


def test_a_waiting_agent_is_approved_from_the_browser_and_proceeds(
    tab: Tab, served: Served
) -> None:
    """The approver sees the request with its exact arguments, approves it with a
    reason, and the agent's write runs once."""
    sent: list[int] = []
    agent = _refund_agent(served, sent)
    request = _decide_in_browser(tab, served, "approve", "checked the order", across_a_poll=True)
    agent.join(20)
    assert agent.outcome == "sent 42" and sent == [42] and agent.stop_reason == "ok"
    record = served.store.get_approval(request.id)
    assert record is not None and record.approver == "acme-approver"
    assert record.reason == "checked the order" and record.status in ("approved", "used")
    assert tab.errors == []


def test_a_denial_from_the_browser_stops_the_agent(tab: Tab, served: Served) -> None:
    """Denied in the browser: the agent stops with ``approval_denied``, nothing sent."""
    sent: list[int] = []
    agent = _refund_agent(served, sent)
    _decide_in_browser(tab, served, "deny", "not this customer")
    agent.join(20)
    assert agent.stop_reason == "approval_denied" and agent.outcome is None
    assert sent == []
    assert "not this customer" in tab.page.locator("table.decided").inner_text()
    assert tab.errors == []


def test_the_kill_switch_set_in_the_browser_stops_a_running_agent_within_1s(
    tab: Tab, served: Served
) -> None:
    """An agent reading in a loop on the same SQLite file stops with ``kill_switch``
    within 1 s of the click that turns acme's switch on."""
    policy = corral.Policy.from_dict(
        {
            "tools": {"allow": ["kb.read"]},
            "budgets": {"max_tool_calls": 1_000_000, "max_seconds": 120, "max_steps": 1_000_000},
        }
    )
    calls = 0

    def loop(run: corral.Run) -> None:
        nonlocal calls
        while True:
            try:
                run.call("kb.read", {"q": f"call {calls}"})
            except corral.Stop:
                agent.stopped_at = time.monotonic()
                raise
            calls += 1
            time.sleep(0.005)

    agent = Agent(served.path, policy, [_read_tool()], loop)
    agent.start()
    tab.login(served.keys["acme-admin"])
    tab.page.goto(f"{served.url}/ui/kill")
    tab.page.select_option("#scope", "tenant")
    tab.page.fill("#target", "acme")
    tab.page.select_option("#mode", "stop_all")
    tab.page.fill("#kill-reason", "runaway agent")
    tab.page.check("#confirm")
    assert agent.is_alive() and calls > 0
    clicked = time.monotonic()
    tab.page.click("#kill-on")
    agent.join(5)
    assert agent.stop_reason == "kill_switch", agent.stop_reason
    assert agent.stopped_at is not None
    delay = agent.stopped_at - clicked
    print(f"kill switch: agent stopped {delay * 1000:.0f} ms after the click")
    assert delay <= 1.0
    tab.page.wait_for_url(f"{served.url}/ui/kill?done=on")
    assert "runaway agent" in tab.page.inner_text("main")
    assert tab.errors == []


def test_every_page_renders_without_console_errors_and_is_screenshotted(
    tab: Tab, served: Served
) -> None:
    """Login, runs (which update live), a run's timeline, approvals, the kill switch and
    the charts render with no console error (the CSP holds htmx too); each is saved."""
    for i in range(3):
        _finished_run(served.store, "acme", f"bot-{i % 2}")
    _finished_run(served.store, "beta", "other")
    stopped_run = _stopped_run(served.store)
    _file_approval(served.store, "apr_shown", "acme", {"amount": 120, "order": "A-1009"})
    killswitch.enable(
        served.store,
        scope="tool",
        target="browser.open",
        mode="stop_all",
        reason="vendor outage",
        actor="ops",
    )
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    live = corral.Run(
        policy, tools=[_read_tool()], store=served.store, tenant="acme", agent="runaway-bot"
    )
    live.call("kb.read", {"q": "x"})
    killswitch.enable(
        served.store,
        scope="run",
        target=live.id,
        mode="stop_all",
        reason="looping on search",
        actor="ops",
    )
    page = tab.page
    page.goto(f"{served.url}/ui/login")
    shots = [tab.shot("login")]
    tab.login(served.keys["root"])
    shots.append(tab.shot("runs"))
    fresh = _finished_run(served.store, "acme", "late-bot")  # appears without a reload
    page.wait_for_selector(f"tr[data-run='{fresh}']", timeout=6000)
    page.goto(f"{served.url}/ui/runs/{stopped_run}")
    assert "max_tool_calls" in page.inner_text("#stop")
    shots.append(tab.shot("run"))
    page.goto(f"{served.url}/ui/approvals")
    assert "A-1009" in page.inner_text("#queue")
    shots.append(tab.shot("approvals"))
    page.goto(f"{served.url}/ui/kill")
    assert "vendor outage" in page.inner_text("main")
    assert "stop requested" in page.inner_text(f"article[data-target='{live.id}']")
    shots.append(tab.shot("kill"))
    page.goto(f"{served.url}/ui/charts")
    assert page.locator("figure.chart svg").count() >= 3
    shots.append(tab.shot("charts"))
    page.wait_for_timeout(2200)  # a round of polling on a page that polls nothing
    page.goto(f"{served.url}/ui/approvals")
    page.wait_for_timeout(2200)  # the queue polled at least once
    assert all(p.stat().st_size > 1000 for p in shots)
    assert tab.errors == []
    live.finish("stopped by hand")


def _stopped_run(store: Store) -> str:
    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read"]}, "budgets": {"max_tool_calls": 2}}
    )
    with corral.Run(policy, tools=[_read_tool()], store=store, tenant="acme", agent="bot") as run:
        for i in range(5):
            run.call("kb.read", {"q": f"{i}"})
    return run.id
