"""What ``import corral`` costs, and a first ``Run`` after it, each in fresh interpreters.

Every round starts one interpreter per case, in turn (so the machine's noise falls on all
of them alike): ``python -c pass`` (the baseline: the interpreter's own start-up), ``import
corral``, and ``import corral`` then a tool, a ``Policy`` from a dict and a ``Run`` on
``memory://`` (the first use). Printed: the median wall time of each (start to exit), its
difference from the baseline, and the time the child measured itself for the work after
start-up.

    python bench/import_time.py [--runs 15] [--cli] [--json]

``--cli`` adds ``corral --help`` (the command's start-up, typer and rich included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Each child prints the seconds its own work took, after the interpreter had started.
CASES: dict[str, str] = {
    "python -c pass": "import time; print(0.0)",
    "import corral": (
        "import time; t = time.perf_counter(); import corral; print(time.perf_counter() - t)"
    ),
    "first Run (memory://)": (
        "import time; t = time.perf_counter()\n"
        "import corral\n"
        "@corral.tool(name='kb.read', effect='read')\n"
        "def read(q: str) -> str:\n"
        "    return q\n"
        "policy = corral.Policy.from_dict({'tools': {'allow': ['kb.read']}})\n"
        "with corral.Run(policy, tools=[read], store='memory://') as run:\n"
        "    print(time.perf_counter() - t)\n"
    ),
}
CLI = "corral --help"


def _once(argv: list[str]) -> tuple[float, float]:
    """Wall seconds from start to exit, and the seconds the child reported (0 for the CLI)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv!r} failed:\n{done.stderr}")
    first = done.stdout.split("\n", 1)[0].strip()
    try:
        inside = float(first)
    except ValueError:
        inside = 0.0  # the CLI prints its help
    return wall, inside


def _argv(case: str) -> list[str]:
    if case == CLI:
        return [str(Path(sys.executable).with_name("corral")), "--help"]
    return [sys.executable, "-c", CASES[case]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="interpreters started per case")
    parser.add_argument("--cli", action="store_true", help="also time `corral --help`")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cases = [*CASES, *([CLI] if args.cli else [])]
    walls: dict[str, list[float]] = {case: [] for case in cases}
    insides: dict[str, list[float]] = {case: [] for case in cases}
    for case in cases:  # a warm-up round: the file system cache, the bytecode
        _once(_argv(case))
    for _ in range(args.runs):
        for case in cases:
            wall, inside = _once(_argv(case))
            walls[case].append(wall)
            insides[case].append(inside)

    base = statistics.median(walls["python -c pass"])
    rows = []
    for case in cases:
        wall = statistics.median(walls[case])
        rows.append(
            {
                "case": case,
                "wall_ms": round(wall * 1e3, 1),
                "over_baseline_ms": round((wall - base) * 1e3, 1),
                "measured_inside_ms": round(statistics.median(insides[case]) * 1e3, 1),
            }
        )
    if args.json:
        print(json.dumps({"runs": args.runs, "rows": rows}, indent=2))
        return
    print(f"medians of {args.runs} fresh interpreters per case, interleaved")
    print(f"{'case':<24}{'wall':>10}{'over pass':>12}{'inside':>10}")
    for row in rows:
        inside = f"{row['measured_inside_ms']:.1f}" if row["case"] not in (CLI,) else "-"
        print(
            f"{row['case']:<24}{row['wall_ms']:>8.1f}ms{row['over_baseline_ms']:>+10.1f}ms"
            f"{inside:>8}{'ms' if inside != '-' else '  '}"
        )


if __name__ == "__main__":
    main()
