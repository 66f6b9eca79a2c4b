"""The path of one read ``Run.call`` through corral's source: which files its code runs in,
in order, and how many hops between files it takes (a hop: a call or return that moves
from one corral file to another). The first call warms the caches; the second is traced.

    python bench/call_path.py          # the files, then the counts
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import corral

ROOT = Path(corral.__file__).resolve().parent


def main() -> None:
    @corral.tool(name="search.read", effect="read", cost_usd=0.01)
    def search(query: str) -> str:
        return f"results for {query}"

    policy = corral.Policy.from_dict({"tools": {"allow": ["search.read"]}})
    with corral.Run(policy, tools=[search], store="memory://") as run:
        run.call("search.read", {"query": "warm"})
        files, hops, calls = trace(lambda: run.call("search.read", {"query": "vendor status"}))
    print("files the call runs in, first seen first:")
    for name in files:
        print(f"  {name}")
    print(f"{len(files)} files, {hops} hops between them ({calls} of them calls into another file)")


def trace(work: Any) -> tuple[list[str], int, int]:
    seen: list[str] = []
    hops = calls = 0
    where: list[str | None] = [None]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal hops, calls
        if event not in ("call", "return"):
            return
        path = Path(frame.f_code.co_filename)
        if event == "return":
            frame = frame.f_back  # type: ignore[assignment]
            if frame is None:
                return
            path = Path(frame.f_code.co_filename)
        try:
            name = str(path.resolve().relative_to(ROOT.parent))
        except ValueError:
            return  # not corral's (the standard library, the tool itself)
        if name not in seen:
            seen.append(name)
        if where[0] is not None and where[0] != name:
            hops += 1
            calls += event == "call"
        where[0] = name

    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
    return seen, hops, calls


if __name__ == "__main__":
    main()
