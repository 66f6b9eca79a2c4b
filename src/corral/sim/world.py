"""The simulated world of the incident: a day of tickets, a vendor portal that goes down,
and a knowledge base. Everything runs on a virtual clock and is deterministic per seed.

>>> from corral.clock import ManualClock
>>> scenario = Scenario()
>>> tasks = make_tasks(seed=7, runs=3, scenario=scenario)
>>> [len(t.urls) in (2, 3, 4) for t in tasks]
[True, True, True]
>>> clock = ManualClock(start=0.0)
>>> vendor = Vendor(scenario, failure_rate=1.0, seed="doc")
>>> "<h1>" in vendor.open(tasks[0].urls[0], clock=clock, deadline=60.0)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal

from corral.clock import Clock

VENDOR_HOST = "portal.vendor.example"
SECTIONS = ("status", "shipping", "invoice", "returns")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """The calibrated shape of the simulated day (seconds since midnight, USD).

    The defaults reproduce the incident: a browser vendor that is down for most of
    a working day, ~$0.70 a browser call, and tickets that each need a few pages.
    """

    day_seconds: float = 24 * 3600.0
    outage_start: float = 9 * 3600.0 + 12 * 60.0  # 09:12
    outage_end: float = 16 * 3600.0 + 20 * 60.0  # 16:20
    browser_cost_usd: Decimal = Decimal("0.70")
    pages: tuple[int, int] = (2, 4)
    page_latency: tuple[float, float] = (2.0, 4.0)
    # During the outage the vendor accepts the connection, hangs, then fails.
    hang: tuple[float, float] = (16.0, 22.0)
    kb_latency: tuple[float, float] = (0.2, 0.5)
    model_latency: tuple[float, float] = (0.8, 2.0)
    #: How many times the agent looks a ticket up in the knowledge base before browsing. A
    #: new prompt or model that makes it look more changes its tool-call mix: the behaviour
    #: ``corral drift`` is there to flag (tests/test_drift_demo.py changes it on purpose).
    kb_lookups: int = 1

    def in_outage(self, t: float) -> bool:
        return self.outage_start <= t < self.outage_end


@dataclass(frozen=True, kw_only=True, slots=True)
class Task:
    """One support ticket: when it arrives and which vendor pages answer it."""

    index: int
    arrival: float
    order: str
    urls: tuple[str, ...]

    @property
    def text(self) -> str:
        pages = " ".join(self.urls)
        return (
            f"Ticket {self.index + 1}: a customer asks where order {self.order} is. "
            f"Read these vendor pages in order, then answer: {pages}"
        )


def make_tasks(*, seed: int, runs: int, scenario: Scenario) -> list[Task]:
    """``runs`` tickets arriving at random times across the day, sorted by arrival."""
    rng = random.Random(f"corral-demo/{seed}/tasks")
    arrivals = sorted(rng.uniform(0.0, scenario.day_seconds) for _ in range(runs))
    tasks = []
    for i, at in enumerate(arrivals):
        order = f"A-{10_000 + i}"
        pages = rng.randint(*scenario.pages)
        urls = tuple(f"https://{VENDOR_HOST}/orders/{order}/{s}" for s in SECTIONS[:pages])
        tasks.append(Task(index=i, arrival=round(at, 3), order=order, urls=urls))
    return tasks


class VendorError(Exception):
    """The vendor answered with a server error."""


class Vendor:
    """The browser's vendor. Outside the outage a page takes 2-4 s; during it a call
    fails with probability ``failure_rate`` after hanging ~16-22 s.

    A call advances ``clock`` by its latency, or only up to ``deadline`` (then raises
    :class:`TimeoutError`), so a caller's timeout is honoured on virtual time.
    Every call is counted, failed or not: the vendor bills them all.
    """

    def __init__(self, scenario: Scenario, *, failure_rate: float, seed: str) -> None:
        self.scenario = scenario
        self.failure_rate = failure_rate
        self._seed = seed
        self._rng = random.Random(f"corral-demo/{seed}/vendor")
        self.calls = 0
        self.calls_in_outage = 0
        self.failures = 0

    def begin(self, key: str) -> None:
        """Start the draws of one run (``key``: its ticket and attempt): a run meets the
        same vendor whatever the runs before it did, so a what-if can be checked by running
        the day again under another policy."""
        self._rng = random.Random(f"corral-demo/{self._seed}/vendor/{key}")

    def open(self, url: str, *, clock: Clock, deadline: float) -> str:
        """Fetch ``url`` (HTML), taking simulated time; raise on failure or at ``deadline``."""
        s, rng = self.scenario, self._rng
        now = clock.monotonic()
        self.calls += 1
        down = s.in_outage(now)
        self.calls_in_outage += int(down)
        # Draw both numbers on every call so one stream serves every failure rate.
        fails = rng.random() < self.failure_rate and down
        latency = rng.uniform(*s.hang) if fails else rng.uniform(*s.page_latency)
        if now + latency > deadline:
            clock.sleep(max(0.0, deadline - now))
            self.failures += 1
            raise TimeoutError(
                f"{VENDOR_HOST} gave no answer within {max(0.0, deadline - now):.1f} s"
            )
        clock.sleep(latency)
        if fails:
            self.failures += 1
            raise VendorError(f"502 Bad Gateway from {VENDOR_HOST} after {latency:.1f} s")
        return page_html(url)


def page_html(url: str) -> str:
    """The page a vendor URL serves (markup and a tracking script included, as real pages do)."""
    order, section = url.rsplit("/", 2)[-2:]
    return (
        f"<html><head><title>{order} · {section}</title><script>track('{order}')</script></head>"
        f"<body><nav>Home · Orders · Help</nav><h1>Order {order}: {section}</h1>"
        f"<p>The {section} record of order {order} is up to date.</p></body></html>"
    )


class KnowledgeBase:
    """Internal notes on tickets (and the agent's other plain lookups): fast, free, never down."""

    def __init__(self, scenario: Scenario, *, seed: str) -> None:
        self.scenario = scenario
        self._seed = seed
        self._rng = random.Random(f"corral-demo/{seed}/kb")
        self.calls = 0

    def begin(self, key: str) -> None:
        """Start the draws of one run (as :meth:`Vendor.begin`)."""
        self._rng = random.Random(f"corral-demo/{self._seed}/kb/{key}")

    def read(self, query: str, *, clock: Clock) -> str:
        self.calls += 1
        clock.sleep(self._rng.uniform(*self.scenario.kb_latency))
        return f"No notes match {query!r}: answer from the vendor pages."

    def search(self, query: str, *, clock: Clock) -> str:
        self.calls += 1
        clock.sleep(self._rng.uniform(*self.scenario.kb_latency))
        return f"No public results for {query!r}."

    def fetch(self, url: str, *, clock: Clock) -> str:
        self.calls += 1
        clock.sleep(self._rng.uniform(*self.scenario.kb_latency))
        return f"{url}: this page needs a browser (scripts required)."


def clock_time(seconds: float) -> str:
    """``HH:MM`` of a time of day (seconds since midnight; later days wrap)."""
    minutes = int(seconds // 60) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
