"""The proxy's stdio transport: JSON-RPC lines on stdin and stdout, read and written on the
event loop.

The SDK's ``stdio_server`` reads and writes the standard streams through worker threads: a
thread hop per line read, per line written and per flush, three per ``tools/call``, each a
wake-up of another thread and a hand-over of the GIL, which on a busy machine was the largest
part of what the proxy added to a call. Here the descriptors are non-blocking and polled by the
event loop instead; the messages and their framing are the SDK's (one JSON-RPC message a line,
parsed and dumped by the SDK's own models).

As the SDK does while it serves, fd 0 points at the null device and fd 1 at stderr, so that
nothing but the protocol reaches stdout (a stray ``print``, a child that inherits fd 1); the
protocol goes through private duplicates, and both descriptors are restored on exit. Where the
standard streams are not pipes or sockets (a terminal, a file) or on Windows, the SDK's own
``stdio_server`` serves.

Imports the ``mcp`` SDK's message types.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

__all__ = ["pollable", "stdio_streams"]

#: How much is read from stdin at a time (bytes).
CHUNK = 1 << 16


def pollable(fd: int) -> bool:
    """Whether descriptor ``fd`` is a pipe or a socket the event loop can poll (POSIX)."""
    if sys.platform == "win32":  # pragma: no cover
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) streams of an MCP server on this process's stdin and stdout, as
    ``mcp.server.stdio.stdio_server`` yields them (see the module docstring)."""
    if not (pollable(0) and pollable(1)):
        from mcp.server.stdio import stdio_server

        async with stdio_server() as streams:
            yield streams
        return
    import fcntl

    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    diverted = False
    try:
        _divert(0, os.open(os.devnull, os.O_RDONLY))
        _divert(1, os.dup(2))
        diverted = True
        os.set_blocking(wire_in, False)
        os.set_blocking(wire_out, False)
        read_in, read_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_in, write_out = anyio.create_memory_object_stream[SessionMessage](0)
        async with anyio.create_task_group() as group:
            group.start_soon(_reader, wire_in, read_in)
            group.start_soon(_writer, wire_out, write_out)
            yield read_out, write_in
    finally:
        for wire, fd in ((wire_in, 0), (wire_out, 1)):
            with contextlib.suppress(OSError):
                os.set_blocking(wire, True)
            if diverted:
                with contextlib.suppress(OSError):
                    os.dup2(wire, fd)
            with contextlib.suppress(OSError):
                os.close(wire)


def _divert(fd: int, to: int) -> None:
    try:
        os.dup2(to, fd)
    finally:
        os.close(to)


def _message(line: bytes) -> SessionMessage | Exception:
    try:
        text = line.decode("utf-8", errors="replace")
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(text, by_name=False))
    except Exception as exc:  # the SDK's stdio transport hands the server the error
        return exc


async def _reader(fd: int, send: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    """Each line of ``fd`` to ``send``, parsed; the stream ends at end of file."""
    pending: list[bytes] = []
    more = False  # whether a read may find more at once (the last one filled its buffer)
    async with send:
        while True:
            if not more:
                await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                more = False
                continue
            if not chunk:
                break
            more = len(chunk) == CHUNK
            pending.append(chunk)
            if b"\n" not in chunk:  # a long line: let the others run while it arrives
                if more:
                    await anyio.lowlevel.checkpoint()
                continue
            *lines, rest = b"".join(pending).split(b"\n")
            pending = [rest] if rest else []
            for line in lines:
                await send.send(_message(line))
        if pending:
            await send.send(_message(b"".join(pending)))


async def _writer(fd: int, receive: MemoryObjectReceiveStream[SessionMessage]) -> None:
    """Each message from ``receive`` to ``fd``, a line each, written whole."""
    async with receive:
        async for message in receive:
            data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
            view = memoryview(data.encode())
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await anyio.wait_writable(fd)
