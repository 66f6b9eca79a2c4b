"""What ``import corral`` costs, and a first ``Run`` after it, each in fresh interpreters.

Every round starts one interpreter per case, in turn (so the machine's noise falls on all
of them alike): ``python -c pass`` (the baseline: the interpreter's own start-up), ``import
corral``, and ``import corral`` then a tool, a ``Policy`` from a dict and a ``Run`` on
``memory://`` (the first use). Printed: the median wall time of each (start to exit), its
difference from the baseline, and the time the child measured itself for the work after
start-up.

    python bench/import_time.py [--runs 15] [--cli] [--against SRC] [--json]

``--cli`` adds ``corral --help`` (the command's start-up, typer and rich included).
``--against SRC`` adds the same two cases for another copy of corral's ``src`` directory
(``git archive REV src | tar -x -C /tmp/old``, then ``--against /tmp/old/src``), started
in the same rounds: the previous code measured in the same sitting.
"""

from __future__ import annotations

import argparse
import json
import os
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
AGAINST = " (against)"


def _once(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds from start to exit, and the seconds the child reported (0 for the CLI)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
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
    return [sys.executable, "-c", CASES[case.removesuffix(AGAINST)]]


def _env(case: str, against: str | None) -> dict[str, str] | None:
    """The other copy first on the path for its cases; this environment for the rest."""
    if against is None or not case.endswith(AGAINST):
        return None
    return {**os.environ, "PYTHONPATH": against}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="interpreters started per case")
    parser.add_argument("--cli", action="store_true", help="also time `corral --help`")
    parser.add_argument("--against", metavar="SRC", help="another copy's src directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cases = [*CASES, *([CLI] if args.cli else [])]
    if args.against:
        cases += [case + AGAINST for case in CASES if case != "python -c pass"]
    walls: dict[str, list[float]] = {case: [] for case in cases}
    insides: dict[str, list[float]] = {case: [] for case in cases}
    for case in cases:  # a warm-up round: the file system cache, the bytecode
        _once(_argv(case), _env(case, args.against))
    for _ in range(args.runs):
        for case in cases:
            wall, inside = _once(_argv(case), _env(case, args.against))
            walls[case].append(wall)
            insides[case].append(inside)

    base = statistics.median(walls["python -c pass"])
    rows: list[dict[str, str | float | None]] = []
    for case in cases:
        wall = statistics.median(walls[case])
        own = None if case == CLI else round(statistics.median(insides[case]) * 1e3, 1)
        rows.append(
            {
                "case": case,
                "wall_ms": round(wall * 1e3, 1),
                "over_baseline_ms": round((wall - base) * 1e3, 1),
                "measured_inside_ms": own,
            }
        )
    if args.json:
        print(json.dumps({"runs": args.runs, "against": args.against, "rows": rows}, indent=2))
        return
    print(f"medians of {args.runs} fresh interpreters per case, interleaved")
    if args.against:
        print(f"(against): {args.against}")
    print(f"{'case':<34}{'wall':>10}{'over pass':>12}{'inside':>10}")
    for row in rows:
        shown = "-" if row["measured_inside_ms"] is None else f"{row['measured_inside_ms']}ms"
        print(f"{row['case']:<34}{row['wall_ms']:>8}ms{row['over_baseline_ms']:>+10}ms{shown:>10}")


if __name__ == "__main__":
    main()
