"""Parsing corral's own source in tests, safe from the garbage earlier tests left.

CPython 3.11's ``ast.parse`` counts its recursion depth in state that Python code run in the
middle of the parse also moves: a garbage collection triggered by the parse's own allocations
runs finalizers (an event-loop object of an earlier test, say, whose ``__del__`` raises "no
running event loop"), and the parse then fails with ``SystemError: AST constructor recursion
depth mismatch`` (seen under pytest-xdist, where files meet in another order each run).
What earlier files left is collected before each file starts (``tests/conftest.py``); not
collecting while parsing keeps finalizers out of the parse.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection (and so no finalizer) until the end of the block. (It does not
    collect first: a full collection of a worker's heap late in the suite takes seconds, and
    some tests parse file by file.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
