"""docs/migration.md runs as written: its files, its commands, and what it says they print.

The page is walked once, top to bottom, in an empty directory: each ``<!-- file: NAME -->``
block is written to NAME (a later block of the same name replaces it, as the page says), each
``<!-- run -->`` block's ``$`` commands are run and what they print is compared with what the
page shows (run and approval ids, times, durations and the policy digest aside), a
``<!-- start -->`` command runs in the background until its ``<!-- finish -->`` block. The
page's scripts run in this process as ``__main__`` and ``corral`` through typer's runner (no
interpreter start-up each); ``python -m`` and the background run are subprocesses. The tests
below then check what each step claims.

After a change of behaviour, regenerate the outputs the page shows with
``python tests/test_migration.py --update`` (and read the diff).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.cli.app import app

DOC = Path(__file__).resolve().parents[1] / "docs" / "migration.md"
STORE = "sqlite:///migration.db"
MARKER = re.compile(r"^<!-- (file: (?P<file>\S+)|run|start|finish|runs table) -->$")
IDS = re.compile(r"\b(?:run|apr)_[0-9a-f]{20}\b")
#: How long a command may take; and how long the first command after a background start is
#: retried until it prints what the page shows (the background run gets there first).
TIMEOUT = 60.0
SETTLE = 20.0


@dataclass
class Block:
    """One marked block of the page: its kind, its file name, its lines and where they are."""

    kind: str
    name: str
    body: list[str]
    start: int  # index of the first body line in the page
    end: int  # index of the closing fence
    step: str


@dataclass
class Ran:
    """One command of the page: what it shows, what it printed, how it exited."""

    step: str
    command: str
    shown: str
    printed: str = ""
    code: int = 0
    block: Block | None = None
    before: str = ""  # for a background run: what it had printed before the next command


@dataclass
class Walk:
    """Everything the walk did, for the tests to check."""

    directory: Path
    ran: list[Ran] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    def commands(self, step: str, prefix: str = "") -> list[Ran]:
        return [r for r in self.ran if r.step.startswith(step) and r.command.startswith(prefix)]


def parse(lines: list[str]) -> list[Block]:
    """The marked blocks of the page, in order, each with the step it belongs to."""
    blocks: list[Block] = []
    step = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            step = line[3:]
        m = MARKER.match(line)
        if m is None:
            i += 1
            continue
        kind = "file" if m.group("file") else line[5:-4]
        if kind == "runs table":
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(
                Block(kind=kind, name="", body=lines[i + 1 : j], start=i + 1, end=j, step=step)
            )
            i = j
            continue
        assert lines[i + 1].startswith("```"), f"line {i + 2}: a marker must precede a fence"
        j = i + 2
        while not lines[j].startswith("```"):
            j += 1
        blocks.append(
            Block(
                kind=kind,
                name=m.group("file") or "",
                body=lines[i + 2 : j],
                start=i + 2,
                end=j,
                step=step,
            )
        )
        i = j + 1
    return blocks


def commands(block: Block) -> list[tuple[str, str]]:
    """The ``$`` commands of a console block, each with the output shown under it."""
    out: list[tuple[str, list[str]]] = []
    for line in block.body:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            assert out, f"{block.step}: output before any command"
            out[-1][1].append(line)
    return [(command, "\n".join(shown)) for command, shown in out]


def normalise(text: str) -> list[str]:
    """The lines that must match: ids, times, durations, digests, the store's directory and
    spacing set aside."""
    out = []
    for line in text.splitlines():
        line = IDS.sub("<id>", line)
        line = re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z", "<time>", line)
        line = re.sub(r"\b\d{2}-\d{2} \d{2}:\d{2}:\d{2}\b", "<time>", line)
        line = re.sub(r"[+]?\b\d+(\.\d+)? ?(ms|s)\b", "<dur>", line)
        line = re.sub(r"\bpolicy [0-9a-f]{16}\b", "policy <digest>", line)
        line = re.sub(r"sqlite:////(\S*/)?", "sqlite:////<dir>/", line)  # where the walk ran
        line = re.sub(r"─+", "─", line)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


def argv(command: str) -> list[str]:
    """The page's command as this interpreter runs it (``python`` and ``corral`` are ours)."""
    words = shlex.split(command, comments=True)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    if words[0] == "corral":
        return [sys.executable, "-m", "corral", *words[1:]]
    raise AssertionError(f"the page runs only python and corral, got {command!r}")


def execute(command: str, directory: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run one command of the page: its exit code, and what it wrote (stdout and stderr, as a
    terminal shows them).

    ``corral`` runs in this process through typer's runner (the app the ``corral`` script
    runs, without a second interpreter's start-up); ``python`` in a subprocess.
    """
    words = argv(command)
    if words[1:2] != ["-m"]:  # a script of the page: in this process, as its __main__
        return _script(words[1:], directory)
    if words[:3] != [sys.executable, "-m", "corral"]:
        proc = subprocess.run(
            words,
            cwd=directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
        )
        return proc.returncode, proc.stdout.decode("utf-8")
    modules = set(sys.modules)
    with contextlib.chdir(directory):
        result = CliRunner().invoke(app, words[3:], env=env)
    for name in set(sys.modules) - modules:  # what --tools imported from the page's files
        if str(getattr(sys.modules[name], "__file__", "")).startswith(str(directory)):
            del sys.modules[name]
    return result.exit_code, result.output


def _script(args: list[str], directory: Path) -> tuple[int, str]:
    """``python SCRIPT ARGS`` in this process (``runpy``), its own directory first on the path;
    the modules it imports from the page's files are dropped afterwards."""
    out = io.StringIO()
    modules, path, argv_before = set(sys.modules), list(sys.path), sys.argv
    sys.argv, sys.path[:0] = args, [str(directory)]
    try:
        with (
            contextlib.chdir(directory),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
        ):
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    finally:
        sys.argv, sys.path[:] = argv_before, path
        for name in set(sys.modules) - modules:
            if str(getattr(sys.modules[name], "__file__", "")).startswith(str(directory)):
                del sys.modules[name]
    return code, out.getvalue()


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(COLUMNS="200", PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", NO_COLOR="1")
    env.pop("PYTHONPATH", None)
    return env


def walk(directory: Path, *, update: bool = False) -> Walk:
    """Run the page in ``directory``; with ``update``, take what is printed as the truth."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    result = Walk(directory=directory, blocks=parse(lines))
    env = environment()
    ids: dict[str, str] = {}  # an id the page shows -> the id this walk got
    background: tuple[subprocess.Popen[bytes], Ran, Path] | None = None

    def run(command: str, shown: str, step: str, block: Block) -> Ran:
        unknown = [i for i in IDS.findall(command) if i not in ids]
        assert not unknown, f"{command}: {unknown} was never printed before on the page"
        real = IDS.sub(lambda m: ids[m.group(0)], command)
        # The first command after a start is retried until it prints what the page shows:
        # the background run gets to the state the page shows (waiting for an approval).
        settling = background is not None and not background[1].before
        deadline = time.monotonic() + (SETTLE if settling else 0)
        while True:
            code, printed = execute(real, directory, env)
            if not settling or normalise(printed) == normalise(shown):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert code in (0, 1), f"{command}: exit {code}\n{printed}"
        doc_ids, got_ids = IDS.findall(shown), IDS.findall(printed)
        if len(doc_ids) == len(got_ids):
            ids.update(zip(doc_ids, got_ids, strict=True))
        return Ran(step=step, command=real, shown=shown, printed=printed, code=code, block=block)

    for block in result.blocks:
        if block.kind == "file":
            (directory / block.name).write_text("\n".join(block.body) + "\n", encoding="utf-8")
        elif block.kind == "run":
            for command, shown in commands(block):
                result.ran.append(run(command, shown, block.step, block))
                if background is not None and not background[1].before:
                    background[1].before = background[2].read_text(encoding="utf-8") or "-"
        elif block.kind == "start":
            ((command, _),) = commands(block)
            log = directory / f".background-{len(result.ran)}.out"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    argv(command), cwd=directory, env=env, stdout=sink, stderr=subprocess.PIPE
                )
            entry = Ran(step=block.step, command=command, shown="", block=block)
            result.ran.append(entry)
            background = (proc, entry, log)
        elif block.kind == "finish":
            assert background is not None, f"{block.step}: finish without start"
            proc, entry, log = background
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err.decode()
            entry.shown, entry.printed, entry.code = "\n".join(block.body), log.read_text(), 0
            entry.block = block
            background = None
    if update:
        _rewrite(lines, result)
    return result


def _rewrite(lines: list[str], result: Walk) -> None:
    """Write what each command printed (and the ids it used) into the page."""
    bodies: dict[int, list[str]] = {}
    for entry in result.ran:
        block = entry.block
        assert block is not None
        printed = [line.rstrip() for line in entry.printed.rstrip("\n").splitlines()]
        if block.kind == "finish":
            bodies[block.start] = printed
        elif block.kind == "run":
            bodies.setdefault(block.start, []).extend([f"$ {entry.command}", *printed])
    by_start = {b.start: b for b in result.blocks}
    for start in sorted(bodies, reverse=True):
        lines[start : by_start[start].end] = bodies[start]
    DOC.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cli_json(directory: Path, *args: str) -> dict[str, object]:
    """What ``corral ARGS --db STORE --json`` prints, parsed."""
    code, printed = execute(
        shlex.join(["corral", *args, "--db", STORE, "--json"]), directory, environment()
    )
    assert code == 0, printed
    body: dict[str, object] = json.loads(printed)
    return body


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> Walk:
    return walk(tmp_path_factory.mktemp("migration"))


# -- the page as a whole ----------------------------------------------------------------------


def test_every_command_prints_what_the_page_shows(walked: Walk) -> None:
    """Each command's output, ids and times aside, is the output the page shows under it."""
    assert len(walked.ran) >= 14
    for entry in walked.ran:
        assert normalise(entry.printed) == normalise(entry.shown), entry.command


def test_the_steps_come_in_the_field_guides_order() -> None:
    """Monitoring, budgets, default deny with approvals, replay, then more autonomy."""
    headings = [line[3:] for line in DOC.read_text().splitlines() if line.startswith("## ")]
    steps = [h for h in headings if h.startswith("Step ")]
    assert [s.split(":")[0] for s in steps] == [f"Step {n}" for n in range(1, 6)]
    words = ["monitoring", "budgets", "default deny", "replay", "autonomy"]
    for step, word in zip(steps, words, strict=True):
        assert word in step


# -- what each step claims --------------------------------------------------------------------


def test_the_loop_writes_unbounded_and_unreviewed(walked: Walk) -> None:
    """Before corral: ten tool calls and a posted reply, with nothing measured."""
    (before,) = walked.commands("The loop", "python agent.py")
    assert before.printed.splitlines() == [
        "  >> posted to T-1042: The vendor is down; we are on it.",
        "answer: 'Replied to T-1042.' after 10 tool calls",
    ]


def test_observe_mode_records_would_be_stops_and_changes_nothing(walked: Walk) -> None:
    """Step 1 makes the same ten calls and the same post, and lists seven would-be stops."""
    (run,) = walked.commands("Step 1", "python governed.py")
    lines = run.printed.splitlines()
    assert lines[0] == "  >> posted to T-1042: The vendor is down; we are on it."
    assert lines[1] == "ok, stop: ok, answer: 'Replied to T-1042.'"
    assert lines[2].startswith("11 steps, 10 tool calls, $2.16, ")
    would = [line.strip() for line in lines[3:]]
    assert len(would) == 7
    assert would.count("would stop: tool_denied:browser.open") == 3
    assert "would stop: max_usd:run (limit 1.00, would be 1.46)" in would
    assert "would stop: approval_denied:ticket.reply" in would


def test_the_report_counts_what_observe_mode_saw(walked: Walk) -> None:
    """corral report after step 1: one observe run, stopped seven times over, by guard."""
    (report,) = walked.commands("Step 1", "corral report")
    lines = normalise(report.printed)
    assert "Observe mode: 1 runs; 1 (100.0%) would have been stopped (7 would-be stops)." in lines
    rows = {tuple(line.split()[:4]): line.split()[-3:] for line in lines if line.count("%") == 1}
    assert rows[("allowlist", "tool_denied", "browser.open", "not_allowed")] == ["3", "1", "100.0%"]
    assert rows[("approval", "approval_denied", "ticket.reply", "1")] == ["1", "1", "100.0%"]
    assert "Enforce mode: no runs in the period." in lines


def test_budgets_stop_the_runaway_before_the_write(walked: Walk) -> None:
    """Step 2 stops at the USD cap, before the second browser call; nothing is posted."""
    (run,) = walked.commands("Step 2", "python governed.py")
    assert "posted" not in run.printed
    lines = run.printed.splitlines()
    assert lines[0] == "stopped, stop: max_usd:run (limit 1.00, would be 1.46), answer: None"
    assert lines[1].startswith("8 steps, 7 tool calls, $0.76, ")


def test_default_deny_refuses_the_browser(walked: Walk) -> None:
    """Step 3 stops the runaway at its first browser call, for six cents."""
    run = walked.commands("Step 3", "python governed.py")[0]
    assert "posted" not in run.printed
    lines = run.printed.splitlines()
    assert lines[0] == "stopped, stop: tool_denied:browser.open, answer: None"
    assert lines[1].startswith("7 steps, 6 tool calls, $0.06, ")


def test_approvals_hold_the_write_until_approved(walked: Walk) -> None:
    """The good day's reply waits, listed as pending, and is posted once after the approval
    (which is then used up)."""
    (waiting,) = [r for r in walked.commands("Step 3") if r.command.endswith("good-day")]
    assert waiting.before == "-"  # nothing printed, nothing posted, while it waited
    (listed,) = walked.commands("Step 3", "corral approvals list")
    assert "pending ticket.reply - ticket-bot" in " ".join(listed.printed.split())
    (approved,) = walked.commands("Step 3", "corral approvals approve")
    assert "ticket.reply" in approved.printed
    assert "(by alice: checked the wording)" in approved.printed
    assert waiting.printed.count(">> posted to T-1042") == 1
    assert "ok, stop: ok, answer: 'Replied to T-1042.'" in waiting.printed.splitlines()
    body = cli_json(walked.directory, "approvals", "list", "--status", "used")
    (approval,) = body["approvals"]  # type: ignore[misc]
    assert (approval["status"], approval["approver"]) == ("used", "alice")
    assert approval["arguments"] == {
        "ticket": "T-1042",
        "text": "The vendor is down; we are on it.",
    }


def test_step_4_names_golden_tasks_drift_replay_and_what_if(walked: Walk) -> None:
    """The page names golden tasks, drift, replay and what-if, and corral has each command."""
    text = DOC.read_text()
    assert "## Step 4: golden tasks, drift, replay and what-if" in text
    assert "`corral drift` compares windows of live runs" in text
    assert "`corral whatif --policy NEW.yaml --since 7d`" in text
    code, printed = execute("corral golden --help", walked.directory, environment())
    assert code == 0 and "run" in printed
    code, printed = execute("corral replay --help", walked.directory, environment())
    assert code == 0 and "recorded run" in printed
    code, printed = execute("corral whatif --help", walked.directory, environment())
    assert code == 0 and "--policy" in printed and "--html" in printed


def test_the_pinned_bounds_pass(walked: Walk) -> None:
    """Step 4's tests, with the scripted model, pass against the step-3 policy."""
    (pytest_run,) = walked.commands("Step 4", "python -m pytest")
    assert pytest_run.code == 0
    assert re.search(r"\b2 passed\b", pytest_run.printed)


def test_check_names_what_the_browser_lacks_then_passes(walked: Walk) -> None:
    """Step 5: corral check --strict fails on the browser's missing needs, then passes."""
    first, second = walked.commands("Step 5", "corral check")
    assert first.code == 1 and second.code == 0
    assert "  ✗ browser.open: can browse: argument url takes a URL or host" in first.printed
    assert "      missing argument_constraints:" in first.printed
    assert (
        first.printed.splitlines()[-1] == "4/7 checklist items met, 2/3 tools have what they need"
    )
    assert (
        second.printed.splitlines()[-1] == "7/7 checklist items met, 3/3 tools have what they need"
    )


def test_bounded_autonomy_stops_at_the_browsers_cap(walked: Walk) -> None:
    """Step 5's run browses twice, then stops at the browser's own cap."""
    (run,) = walked.commands("Step 5", "python governed.py")
    assert "posted" not in run.printed
    assert run.printed.splitlines()[0] == (
        "stopped, stop: max_tool_calls:tool/browser.open (limit 2, would be 3), answer: None"
    )


def test_the_numbers_table_is_what_the_store_holds(walked: Walk) -> None:
    """The closing table's rows are the recorded runs, oldest first, with their figures."""
    (table,) = [b for b in walked.blocks if b.kind == "runs table"]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.body[2:]]
    assert rows[0][2] == "10"  # the loop, from its own output
    runs = cli_json(walked.directory, "runs")["runs"]
    recorded = list(reversed(runs))  # type: ignore[call-overload]
    assert len(recorded) == len(rows) - 1
    for row, record in zip(rows[1:], recorded, strict=True):
        stop = record["stop"]["text"] if record["stop"] else record["stop_reason"]
        assert row[1].startswith(f"`{stop}`"), (row, stop)
        assert row[2] == str(record["tool_calls"])
        assert Decimal(row[3]) == Decimal(record["usd"])
        if record["would_stop"]:
            assert f"{len(record['would_stop'])} would-be stops" in row[1]


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_migration.py --update")
    with tempfile.TemporaryDirectory(prefix="corral-migration-") as where:
        walk(Path(where), update=True)
    print(f"rewrote the outputs in {DOC}")
