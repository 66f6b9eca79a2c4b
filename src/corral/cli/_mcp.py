"""What ``corral mcp serve`` and ``corral serve --mcp-policy`` share: the proxy's parts from
the command's options (policy, upstreams, pins), its streamable HTTP app, serving an ASGI app
until a signal, and the lock file beside a policy.

Imports the shared ``_common`` and ``_output``; the MCP package (and the ``mcp`` SDK) when
called.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.cli._common import EXIT_USAGE, Fail, one_line
from corral.cli._output import echo
from corral.exceptions import ConfigError

if TYPE_CHECKING:
    from corral.mcp.pins import Pins
    from corral.mcp.proxy import Proxy, Upstream
    from corral.policy.schema import Policy


def proxy_parts(
    policy: Path, stdio: list[str] | None, http: list[str] | None, lock: Path | None
) -> tuple[Policy, list[Upstream], Pins]:
    """The proxy's policy, upstreams and pins from the command's options."""
    from corral.mcp.pins import Pins, read_lock

    rules = policy_of(policy)
    upstreams = upstreams_of(stdio, http)
    path = lock if lock is not None else default_lock(policy)
    if lock is not None:
        read_lock(path)  # a lock named but missing or broken: refused at start
    pins = Pins.from_lock(path)  # watched: an approved definition is picked up live
    return rules, upstreams, pins


def http_app(proxy: Proxy, host: str) -> Any:
    """The proxy's streamable HTTP app (a Starlette app serving ``/mcp``; its lifespan runs
    the SDK's session manager, whose idle timeout is the proxy's)."""
    return proxy.server().streamable_http_app(host=host, session_idle_timeout=proxy.idle_seconds)


async def serve_http(
    app: Any, host: str, port: int, banner: str, log_level: str = "warning"
) -> bool:
    """Serve the ASGI ``app`` on ``HOST:PORT`` until SIGINT or SIGTERM (taken here, so that
    the caller ends its sessions' runs before the process ends); whether it listened."""
    try:
        import uvicorn
    except ImportError as exc:
        raise Fail(
            EXIT_USAGE,
            f"serving HTTP needs the serve extra ({exc.name} is missing): "
            "pip install 'corral[serve]'",
        ) from None
    import signal

    import anyio

    echo(banner, err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    http = uvicorn.Server(config)
    # uvicorn would take SIGINT/SIGTERM and raise them again once down, ending the process
    # before the sessions' runs are ended and recorded: the signals are taken here instead.
    http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    async def stop_on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for _ in received:
                http.should_exit = True
                return

    async with anyio.create_task_group() as group:
        group.start_soon(stop_on_signal)
        await http.serve()
        group.cancel_scope.cancel()
    return bool(http.started)


def freeze_heap() -> None:
    """Leave what the proxy built at start (the SDK's and pydantic's models, the policy,
    the upstreams' tools: over 100,000 objects) out of the garbage collector's full
    collections, which otherwise walk all of it now and then mid-call (a pause of ~70 ms
    on the development machine, ~8 ms once frozen)."""
    import gc

    gc.collect()
    gc.freeze()


def default_lock(policy: Path) -> Path:
    """The lock file beside a policy: ``support.yaml`` -> ``support.mcp-lock.json``."""
    return policy.with_name(f"{policy.stem}.mcp-lock.json")


def policy_of(path: Path) -> Policy:
    from corral.policy.schema import load_policy

    try:
        return load_policy(path)
    except ConfigError as exc:
        raise Fail(EXIT_USAGE, f"--policy: {one_line(exc)}") from None
    except OSError as exc:
        raise Fail(EXIT_USAGE, f"--policy: cannot read {path}: {exc.strerror}") from None


def upstreams_of(stdio: list[str] | None, http: list[str] | None) -> list[Upstream]:
    from mcp import StdioServerParameters

    from corral.mcp.proxy import Upstream

    out: list[Upstream] = []
    for flag, values in (("--stdio", stdio or []), ("--http", http or [])):
        for value in values:
            name, sep, rest = value.partition("=")
            if not sep or not name or not rest.strip():
                raise Fail(
                    EXIT_USAGE,
                    f"{flag} {value!r}: give NAME=" + ("COMMAND" if flag == "--stdio" else "URL"),
                )
            target: Any
            if flag == "--stdio":
                words = shlex.split(rest)
                target = StdioServerParameters(command=words[0], args=words[1:])
            else:
                target = rest.strip()
            out.append(Upstream(name, target))
    if not out:
        raise Fail(
            EXIT_USAGE, "name at least one upstream: --stdio NAME=COMMAND or --http NAME=URL"
        )
    return out
