"""The proxy's stdio transport (``corral.mcp.stdio``): JSON-RPC lines read and written on the
event loop, framed and parsed as the SDK's ``stdio_server`` does them, with stray output kept
off the protocol; the SDK's own transport where stdin is not a pipe. And the one watch that
cancels the calls in flight a ``stop_all`` switch covers (``corral.mcp.watch``).

Each test runs a small echo server on the transport in a subprocess: it prints a stray line
(which must reach stderr, not the protocol), sends back every message it reads, and says on
stderr which lines it could not parse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import anyio

import corral
from corral.loop.tickets import Ticket
from corral.mcp.watch import Watch

SRC = str(Path(corral.__file__).resolve().parent.parent)

ECHO = """
import sys
import anyio
from corral.mcp.stdio import pollable, stdio_streams

async def main() -> None:
    print("piped" if pollable(0) and pollable(1) else "not piped", file=sys.stderr, flush=True)
    async with stdio_streams() as (read, write):
        print("stray output", flush=True)
        async with read, write:
            async for message in read:
                if isinstance(message, Exception):
                    print("unparsed:", type(message).__name__, file=sys.stderr, flush=True)
                else:
                    await write.send(message)
    print("restored", flush=True)

anyio.run(main)
"""


def _request(i: int, text: str = "x") -> str:
    params = {"name": "echo", "arguments": {"text": text}}
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params})


def _run(stdin: bytes | Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC}
    command = [sys.executable, "-c", ECHO]
    if isinstance(stdin, Path):
        with stdin.open("rb") as source:
            return subprocess.run(command, stdin=source, capture_output=True, env=env, timeout=60)
    return subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60)


def _lines(out: bytes) -> list[str]:
    return out.decode().splitlines()


def test_messages_come_back_whole_and_in_order_with_stray_output_on_stderr() -> None:
    """Lines split across reads (one far longer than a read), a last line without a newline
    and a broken line: the valid messages are echoed in order, a line each; the broken one
    reaches the server as a parse error; a stray print goes to stderr, not the protocol."""
    long = "y" * 200_000
    wire = f"{_request(1)}\n{_request(2, long)}\r\nnot json\n{_request(3)}".encode()
    done = _run(wire)
    assert done.returncode == 0, done.stderr.decode()
    lines = _lines(done.stdout)
    assert lines[-1] == "restored"  # fd 1 is the protocol's again once the transport exits
    echoed = [json.loads(line) for line in lines[:-1]]
    assert [m["id"] for m in echoed] == [1, 2, 3]
    assert echoed[1]["params"]["arguments"]["text"] == long
    err = done.stderr.decode()
    assert "piped" in err.splitlines()[0]
    assert "stray output" in err
    assert err.count("unparsed:") == 1


def test_stdin_that_is_not_a_pipe_is_served_by_the_sdks_transport(tmp_path: Path) -> None:
    """A file on stdin cannot be polled: the SDK's ``stdio_server`` serves it, alike."""
    source = tmp_path / "requests.jsonl"
    source.write_text(f"{_request(1)}\n{_request(2)}\n")
    done = _run(source)
    assert done.returncode == 0, done.stderr.decode()
    lines = _lines(done.stdout)
    assert [json.loads(line)["id"] for line in lines[:-1]] == [1, 2]
    assert lines[-1] == "restored"
    err = done.stderr.decode()
    assert err.splitlines()[0] == "not piped"
    assert "stray output" in err


class _Ticket:
    """A ticket whose kill-switch check answers what it is told."""

    def __init__(self) -> None:
        self.answer: BaseException | None = None
        self.raises: Exception | None = None

    def killed(self) -> BaseException | None:
        if self.raises is not None:
            raise self.raises
        return self.answer


def _watched(ticket: _Ticket, after: float) -> tuple[object, BaseException | None]:
    """Run a 5 s call under a watch that looks every 10 ms; the ticket's check changes
    after ``after`` seconds (no change when negative)."""

    async def main() -> tuple[object, BaseException | None]:
        watch = Watch(every=0.01)
        failure = RuntimeError("stop_all")

        async def slow() -> str:
            await anyio.sleep(5)
            return "done"

        async def switch() -> None:
            await anyio.sleep(after)
            ticket.answer = failure

        async with anyio.create_task_group() as group:
            group.start_soon(watch.run)
            if after >= 0:
                group.start_soon(switch)
            with anyio.fail_after(2):
                try:
                    found = await watch.call(cast(Ticket, ticket), slow)
                except ValueError as exc:  # raised in this task, not the watch's
                    found = ("raised", exc)
            group.cancel_scope.cancel()
        return found

    return anyio.run(main)


def test_the_watch_cancels_a_call_a_stop_all_switch_comes_to_cover() -> None:
    """One watch for every call in flight: once the ticket says a switch covers the call,
    the call is cancelled within a look or two and its failure handed back."""
    result, failure = _watched(_Ticket(), 0.05)
    assert result is None
    assert isinstance(failure, RuntimeError)


def test_the_watch_raises_in_the_call_what_its_check_raised() -> None:
    """A check that fails is the call's failure (raised in the call's task), never the
    watch's: the proxy's other calls are watched on."""
    ticket = _Ticket()
    ticket.raises = ValueError("cannot look")
    assert _watched(ticket, -1) == ("raised", ticket.raises)
