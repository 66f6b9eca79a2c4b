"""Writes that die: forked processes that run a governed write and SIGKILL themselves at a
chosen point, with the side effect counted outside them (an fsync'd file).

The fault points are injected through public seams only: the store (a delegating
wrapper that dies before or after a claim, or before an outcome is stored) and the
tool itself (dies before or after its side effect). Nothing in corral knows it is tested.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import corral
from corral.stores import Store
from corral.stores.leases import Renewer

POINTS = ("before_claim", "after_claim", "inside_tool", "after_tool", "before_outcome")
"""Where a write is killed: before its claim, right after it, inside the tool before the
side effect, right after the side effect, and before the outcome is stored."""

TOOL = "pay.send"
POLICY = corral.Policy.from_dict(
    {"tools": {"allow": [TOOL]}, "writes": {"require_approval": False}}
)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def effects(path: Path) -> list[str]:
    """Every side effect that happened, one line each (written and fsync'd by the tool)."""
    if not path.exists():
        return []
    return path.read_text().splitlines()


def _record(path: Path, order: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (order + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class DyingStore:
    """A store that kills its process at ``point``: before or after a claim is made, or
    before an outcome is stored (every other call goes to ``inner``)."""

    def __init__(self, inner: Store, point: str | None) -> None:
        self._inner = inner
        self._point = point

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def claim(self, key: str, digest: str, **kw: Any) -> Any:
        if self._point == "before_claim":
            die()
        result = self._inner.claim(key, digest, **kw)
        if self._point == "after_claim" and result.status == "claimed":
            die()
        return result

    def complete(self, key: str, outcome: Mapping[str, Any], **kw: Any) -> None:
        if self._point == "before_outcome":
            die()
        self._inner.complete(key, outcome, **kw)


def pay_tool(
    path: Path,
    *,
    point: str | None = None,
    reconcile: bool = False,
    sleep: float = 0.0,
    by_order: bool = True,
) -> corral.Tool:
    """``pay.send(order)``: appends ``order`` to ``path`` (fsync'd); keyed by the order (else
    by run, tool and arguments)."""
    import time

    def check(key: str, args: Mapping[str, Any], ctx: corral.ToolContext) -> str:
        if args["order"] in effects(path):
            return f"paid {args['order']}"
        raise corral.NotExecuted(f"no payment for {args['order']}")

    @corral.tool(
        name=TOOL,
        effect="write",
        idempotency_key_from=["order"] if by_order else (),
        reconcile=check if reconcile else None,
        timeout=10,
    )
    def pay(order: str) -> str:
        if point == "inside_tool":
            die()
        if sleep:
            time.sleep(sleep)
        _record(path, order)
        if point == "after_tool":
            die()
        return f"paid {order}"

    return pay


def pay(
    store: Store,
    path: Path,
    order: str,
    *,
    reconcile: bool = False,
    run_id: str | None = None,
    services: corral.Services | None = None,
) -> corral.RunResult:
    """Pay ``order`` in a run of this process; returns the run's result."""
    tool = pay_tool(path, reconcile=reconcile)
    with corral.Run(POLICY, tools=[tool], store=store, run_id=run_id, services=services) as run:
        run.call(TOOL, {"order": order})
        run.finish("done")
    return run.result


def quick_leases(lease: float, every: float = 0.1) -> corral.Services:
    """Services whose idempotency claims are leased for ``lease`` seconds, renewed every
    ``every``: a dead process's claim lapses quickly."""
    return corral.Services(renewer=Renewer(interval=every, lease=lease))


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; returns its wait status (``-9`` when SIGKILLed)."""
    pid = os.fork()
    if pid == 0:  # the child: never return into the test runner
        code = 0
        try:
            work()
        except BaseException:
            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def pay_and_die(
    store: Store, path: Path, order: str, point: str, services: corral.Services | None = None
) -> int:
    """Pay ``order`` in a child process killed at ``point``; returns its wait status."""

    def work() -> None:
        tool = pay_tool(path, point=point)
        dying = DyingStore(store, point)
        with corral.Run(POLICY, tools=[tool], store=dying, services=services) as run:
            run.call(TOOL, {"order": order})

    return in_child(work)


def pg() -> ModuleType:
    """``tests/stores/pg.py`` (the PostgreSQL helpers), imported once under its own name."""
    if "pg" not in sys.modules:
        spec = importlib.util.spec_from_file_location("pg", Path(__file__).parent / "stores/pg.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["pg"] = module
        spec.loader.exec_module(module)
    return sys.modules["pg"]
