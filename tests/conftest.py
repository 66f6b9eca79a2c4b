"""Shared fixtures: a fresh in-memory store, tools that count their own calls, and Debian's
Chromium driven by Playwright (``browser``; never ``playwright install``)."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.testing import MemoryStore

# Runs that name no store use the default store: keep them (and the CLI in subprocesses)
# in memory, so the test suite never writes corral.db into the working directory.
os.environ.setdefault("CORRAL_DB", "memory://")


@pytest.fixture(autouse=True)
def _no_inherited_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables are as wide as the test says, whatever runs the tests: a runner that exports
    ``COLUMNS`` (a terminal, a worker process) would otherwise narrow the CLI's tables."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture(autouse=True, scope="module")
def _garbage_of_earlier_files_collected() -> None:
    """What the files before this one left (event loops, transports, streams) is collected
    before it starts, where their finalizers can run safely, not at some allocation in the
    middle of its tests: under pytest-xdist the files meet in another order each run, and
    CPython 3.11's ``ast.parse`` fails if a finalizer runs inside it (``tests/sources.py``)."""
    gc.collect()


#: Debian's Chromium (``.ci/run`` installs it).
CHROMIUM = os.environ.get("CORRAL_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium; a failure in CI without one, a skip elsewhere. Module-scoped:
    while it is open, Playwright's event loop runs in the test thread (``corral.run`` then
    refuses to start), so a module puts the tests that use it last."""
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Probe:
    """A tool plus the record of every time its own code ran."""

    tool: corral.Tool
    calls: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.calls)


def make_probe(
    name: str,
    effect: str | None = "read",
    *,
    returns: Any = "ok",
    fails: int = 0,
    error: BaseException | None = None,
    sleep: float = 0.0,
    **options: Any,
) -> Probe:
    """A tool taking ``q: str``; its first ``fails`` calls raise ``error``, then it returns
    ``returns`` (called with ``q`` when callable)."""
    probe = Probe(tool=None)  # type: ignore[arg-type]

    def fn(q: str = "") -> Any:
        probe.calls.append(q)
        if sleep:
            time.sleep(sleep)
        if probe.count <= fails:
            raise error or ConnectionError("vendor down")
        return returns(q) if callable(returns) else returns

    probe.tool = corral.tool(fn, name=name, effect=effect, **options)
    return probe


@pytest.fixture
def store() -> MemoryStore:
    """A fresh in-memory store, so runs in one test share nothing with another."""
    return MemoryStore()


@pytest.fixture
def probe() -> Callable[..., Probe]:
    """The :func:`make_probe` factory."""
    return make_probe
