"""How long the ``corral`` command takes to start, each command in fresh interpreters.

Every round starts one process per case, in turn (so the machine's noise falls on all of them
alike): ``python -c pass`` (the baseline: the interpreter's own start-up), then ``corral
--help``, ``corral version`` and ``corral check tests/configs/reference.yaml`` through the
installed ``corral`` script. Printed: the median wall time of each (start to exit) and its
difference from the baseline; then, from one more run of each under ``python -X importtime``,
how many modules it imported and the import time the interpreter reported for them (the sum
of the top-level imports' cumulative times).

    python bench/cli_start.py [--runs 15] [--against SRC] [--json]

``--against SRC`` adds the same commands run on another copy of corral's ``src`` directory
(``git archive REV src | tar -x -C /tmp/old``, then ``--against /tmp/old/src``), started in
the same rounds: the previous code measured in the same sitting.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "python -c pass"
COMMANDS: dict[str, list[str]] = {
    "corral --help": ["--help"],
    "corral version": ["version"],
    "corral check reference.yaml": ["check", str(ROOT / "tests" / "configs" / "reference.yaml")],
}
AGAINST = " (against)"
_TOP_LEVEL = re.compile(r"^import time:\s+\d+ \|\s+(\d+) \| (\S.*)$")


def _argv(case: str, *, importtime: bool = False) -> list[str]:
    if case == BASELINE:
        return [sys.executable, "-c", "pass"]
    script = str(Path(sys.executable).with_name("corral"))
    flags = ["-X", "importtime"] if importtime else []
    return [sys.executable, *flags, script, *COMMANDS[case.removesuffix(AGAINST)]]


def _env(case: str, against: str | None) -> dict[str, str] | None:
    """The other copy first on the path for its cases; this environment for the rest."""
    if against is None or not case.endswith(AGAINST):
        return None
    return {**os.environ, "PYTHONPATH": against}


def _once(argv: list[str], env: dict[str, str] | None) -> tuple[float, str]:
    """Wall seconds from start to exit, and what the process wrote on stderr."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv!r} failed ({done.returncode}):\n{done.stderr}")
    return wall, done.stderr


def _imports(stderr: str) -> tuple[int, float]:
    """Modules imported and the top-level imports' cumulative milliseconds, from
    ``-X importtime``'s report."""
    lines = [line for line in stderr.splitlines() if line.startswith("import time:")]
    top = [int(m.group(1)) for line in lines if (m := _TOP_LEVEL.match(line))]
    return len(lines) - 1, sum(top) / 1e3  # the first line is the header


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="processes started per case")
    parser.add_argument("--against", metavar="SRC", help="another copy's src directory")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    cases = [BASELINE, *COMMANDS]
    if args.against:
        cases += [case + AGAINST for case in COMMANDS]
    walls: dict[str, list[float]] = {case: [] for case in cases}
    for case in cases:  # a warm-up round: the file system cache, the bytecode
        _once(_argv(case), _env(case, args.against))
    for _ in range(args.runs):
        for case in cases:
            walls[case].append(_once(_argv(case), _env(case, args.against))[0])

    base = statistics.median(walls[BASELINE])
    rows: list[dict[str, str | float | int | None]] = []
    for case in cases:
        wall = statistics.median(walls[case])
        modules, imports_ms = (None, None)
        if case != BASELINE:
            modules, imports_ms = _imports(
                _once(_argv(case, importtime=True), _env(case, args.against))[1]
            )
        rows.append(
            {
                "case": case,
                "wall_ms": round(wall * 1e3, 1),
                "over_baseline_ms": round((wall - base) * 1e3, 1),
                "modules": modules,
                "importtime_ms": None if imports_ms is None else round(imports_ms, 1),
            }
        )
    if args.json:
        print(json.dumps({"runs": args.runs, "against": args.against, "rows": rows}, indent=2))
        return
    print(f"medians of {args.runs} fresh processes per case, interleaved")
    if args.against:
        print(f"(against): {args.against}")
    print(f"{'case':<42}{'wall':>10}{'over pass':>12}{'modules':>9}{'importtime':>12}")
    for row in rows:
        modules = "-" if row["modules"] is None else str(row["modules"])
        imports = "-" if row["importtime_ms"] is None else f"{row['importtime_ms']}ms"
        print(
            f"{row['case']:<42}{row['wall_ms']:>8}ms{row['over_baseline_ms']:>+10}ms"
            f"{modules:>9}{imports:>12}"
        )


if __name__ == "__main__":
    main()
