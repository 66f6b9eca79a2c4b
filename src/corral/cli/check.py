"""``corral check FILE [--strict] [--tools module:object] [--pin] [--json]``, also run on its own as
``python -m corral.cli.check FILE ...``.

Exit codes: 0 the policy is valid; 2 it is not (one ``path: message`` line per
problem, never a traceback; with ``--tools``, a constraint naming an argument its tool
does not take is one), or ``--tools`` cannot be loaded; 1 with ``--strict``
while a checklist item is missing or an allowed tool misses a need of the decision
aid (:mod:`corral.policy.decision_aid`). Warnings never change the exit code.

``--json`` prints one object whose shape is stable::

    {"valid": bool, "problems": [str], "items": [{"key", "title", "met", "why", "hint"}],
     "tools": [{"name", "kinds": [str], "because": [str], "needs": [str],
                "missing": [str], "why": {need: str}, "hints": {need: str}}],
     "warnings": [str]}

``--pin`` writes the allowed ``--tools`` definitions to the lock file ``tools.pins`` names
(:mod:`corral.gateway.pins`); a tool that no longer matches its pin, and an unconstrained
open-world MCP tool of a lock beside the policy (:mod:`corral.mcp.openworld`), are warnings.

Touches no store. Imports the policy's schema and readiness checklist, the constraint
check (:mod:`corral.policy.tool_args`) and the shared ``_common``; no other command module.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from corral._safe import error_text
from corral.cli._common import JsonOption
from corral.cli._output import SafeConsole, echo
from corral.exceptions import ConfigError, PolicyError
from corral.policy.schema import Policy, load_policy
from corral.policy.tool_args import constraint_problems

if TYPE_CHECKING:
    from corral.policy.decision_aid import ToolNeeds
    from corral.policy.readiness import Report

EXIT_OK = 0
EXIT_MISSING = 1
EXIT_INVALID = 2


def check(
    file: Annotated[Path, typer.Argument(help="Policy file (.yaml, .yml or .json).")],
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 while a checklist item or a tool's need is missing."),
    ] = False,
    tools: Annotated[
        str | None,
        typer.Option("--tools", help="module:object holding your registered tools."),
    ] = None,
    json_out: JsonOption = False,
    pin: Annotated[
        bool,
        typer.Option(
            "--pin",
            help="Pin the --tools definitions: write their digests to the lock file tools.pins "
            "names (default POLICY.tools-lock.json beside the policy).",
        ),
    ] = False,
) -> None:
    """Validate a policy; report the readiness checklist and what each tool needs.

    A tool that can write needs approvals, idempotency and audit.

    A tool that can browse needs budgets, dedupe, degrade mode and host constraints.

    In a multi-tenant policy, every tool needs scoped credentials.

    Exit 0 valid, 2 invalid (one line per problem); --strict exits 1 while anything is missing.
    """
    code = EXIT_INVALID
    try:
        code = check_command(file, strict=strict, tools=tools, as_json=json_out, pin=pin)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): exit quietly, as other command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise typer.Exit(code)


def check_command(
    file: Path, strict: bool, tools: str | None, as_json: bool, pin: bool = False
) -> int:
    """Validate ``file``, print the readiness report, and return the exit code."""
    # The checklist loads when a policy is checked, not with every command's --help.
    from corral.policy.readiness import readiness

    problems: list[str] = []
    policy: Policy | None = None
    notes: list[str] = []
    if pin:
        try:
            notes.append(pin_tools(file, tools))
        except ToolsSpecError as exc:
            _print_invalid(file, [f"--pin: {exc}"], as_json)
            return EXIT_INVALID
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        problems += exc.problems
    except Exception as exc:  # never a traceback: one line naming what happened
        problems.append(f"(file): cannot be checked ({' '.join(error_text(exc).split())})")
    registered: list[object] | None = None
    if tools is not None:
        try:
            registered = load_tools(tools)
        except ToolsSpecError as exc:
            problems.append(f"--tools: {exc}")
    if policy is not None and registered is not None:
        # A constraint on an argument no registered tool takes would never apply: a run
        # refuses to start with it, so the check says so too.
        by_name = {str(getattr(t, "name", "")): t for t in registered}
        problems += constraint_problems(policy, by_name)
    if problems or policy is None:
        _print_invalid(file, problems, as_json)
        return EXIT_INVALID
    report = readiness(policy, registered)
    report.warnings.extend(pin_warnings(file, policy, registered))
    _print_report(file, report, as_json, registered)
    for note in notes:
        echo(note, err=True)
    return EXIT_MISSING if strict and not report.ready else EXIT_OK


# -- pins ------------------------------------------------------------------------------------------


def default_tools_lock(file: Path) -> Path:
    """The in-process tools' lock file beside a policy: ``support.tools-lock.json``."""
    return file.with_name(f"{file.stem}.tools-lock.json")


def pin_tools(file: Path, spec: str | None) -> str:
    """``--pin``: write the digests and definitions of the allowed ``--tools`` to the lock
    file ``tools.pins`` names (or the default one beside the policy); what was done."""
    from corral.gateway.pins import pin_digest
    from corral.policy._input import parse_json, read_text
    from corral.policy.locks import Pinned, write_pins
    from corral.record.recording import tool_definition
    from corral.tools import Tool

    if spec is None:
        raise ToolsSpecError("give the tools to pin with --tools MODULE:OBJECT")
    try:
        text = read_text(file)
        if file.suffix.lower() == ".json":
            data = parse_json(text, str(file))
        else:
            from corral.policy._yaml import parse_yaml

            data = parse_yaml(text, str(file))
    except PolicyError as exc:
        raise ToolsSpecError(f"the policy cannot be read: {'; '.join(exc.problems)}") from None
    except OSError as exc:
        raise ToolsSpecError(f"cannot read {file}: {exc.strerror}") from None
    section = data.get("tools") if isinstance(data, dict) else None
    section = section if isinstance(section, dict) else {}
    named = section.get("pins")
    if named is not None and not isinstance(named, str):
        raise ToolsSpecError(
            "tools.pins lists the digests in the policy itself: name a lock file there "
            "(tools.pins: FILE) for --pin to write, or remove the key"
        )
    path = default_tools_lock(file) if named is None else file.parent / named
    listed = section.get("allow")
    allowed: list[Any] = listed if isinstance(listed, list) else []
    pins = {
        t.name: Pinned(pin_digest(t), tool_definition(t))
        for t in load_tools(spec)
        if isinstance(t, Tool) and not t.described and t.name in allowed
    }
    write_pins(path, pins)
    said = f"pinned {len(pins)} tool definition(s) in {path}"
    if named is None:
        said += f"; add `pins: {path.name}` under tools: in {file.name} to enforce them"
    return said


def pin_warnings(file: Path, policy: Policy, registered: list[object] | None) -> list[str]:
    """Warnings about pins: an allowed --tools tool whose definition is not its pin
    (``tools.pins``), and each allowed open-world MCP tool the policy does not constrain
    (when a ``POLICY.mcp-lock.json`` sits beside the policy)."""
    out: list[str] = []
    if policy.tools.pins is not None and registered is not None:
        from corral.gateway.pins import unpinned
        from corral.tools import Tool

        tools = {t.name: t for t in registered if isinstance(t, Tool)}
        for name, why in sorted(unpinned(policy, tools).items()):
            what = "changed since it was pinned" if why == "definition_changed" else "is not pinned"
            out.append(
                f"{name}: its definition {what} (tools.pins): runs refuse it until it is "
                "pinned again (corral check --tools ... --pin)"
            )
    lock = file.with_name(f"{file.stem}.mcp-lock.json")
    if lock.exists():
        from corral.mcp.openworld import open_world_warnings
        from corral.policy.locks import read_pins

        try:
            pinned = read_pins(lock)
        except ConfigError as exc:
            return [*out, f"{lock.name}: {exc}"]
        out += open_world_warnings(policy, {n: p.definition for n, p in pinned.items()})
    return out


# -- --tools module:object ----------------------------------------------------------------------


class ToolsSpecError(Exception):
    """``--tools`` does not name importable tools; the message is one line."""


def load_tools(spec: str) -> list[object]:
    """Import ``module:object`` (the current directory first on the path) and return its tools.

    The object may be one tool, a list or tuple of tools, or a dict of name to tool.
    Anything the module prints while importing goes to stderr, not into the report.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise ToolsSpecError(f"expected module:object (e.g. myagent.tools:TOOLS), got {spec!r}")
    module = _import(module_name)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            public = [n for n in dir(value) if not n.startswith("_")]
            close = difflib.get_close_matches(part, public, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ToolsSpecError(f"{module_name!r} has no attribute {attr!r}{hint}")
        value = getattr(value, part)
    return _as_tools(value, spec)


def _import(module_name: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise ToolsSpecError(
                f"no module named {module_name!r} (looked in {cwd} and on sys.path)"
            ) from None
        raise ToolsSpecError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except (Exception, SystemExit) as exc:
        raise ToolsSpecError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _as_tools(value: Any, spec: str) -> list[object]:
    if isinstance(getattr(value, "name", None), str):
        return [value]
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        pairs = [(None, item) for item in value]
    else:
        raise ToolsSpecError(
            f"{spec!r} is not a tool, a list of tools or a dict of tools,"
            f" got {type(value).__name__}"
        )
    out: list[object] = []
    for index, (key, item) in enumerate(pairs):
        if isinstance(getattr(item, "name", None), str):
            out.append(item)
        elif callable(item) and (key is not None or hasattr(item, "__name__")):
            # A plain function is a tool whose effect is unknown (treated as a write).
            name = key if key is not None else item.__name__
            out.append(SimpleNamespace(name=str(name), effect=getattr(item, "effect", None)))
        else:
            where = f"key {key!r}" if key is not None else f"item {index}"
            raise ToolsSpecError(f"{where} of {spec!r} is not a tool, got {type(item).__name__}")
    return out


# -- output ---------------------------------------------------------------------------------------


def _console() -> Console:
    # soft_wrap: a problem stays on one line whatever the terminal width, so it can be grepped.
    return SafeConsole(highlight=False, soft_wrap=True, emoji=False)


def _is_utf(encoding: str | None) -> bool:
    return (encoding or "").lower().replace("-", "").replace("_", "").startswith("utf")


class _Printer:
    """Plain lines with optional style; text the terminal cannot encode is escaped, not fatal."""

    def __init__(self) -> None:
        self.console = _console()
        self.utf = _is_utf(self.console.encoding)
        self.tick, self.cross, self.bang = ("✓", "✗", "!") if self.utf else ("+", "x", "!")

    def text(self, value: str, style: str = "") -> Text:
        if not self.utf:
            encoding = self.console.encoding or "ascii"
            value = value.encode(encoding, "backslashreplace").decode(encoding)
        return Text(value, style=style)

    def line(self, *parts: Text) -> None:
        self.console.print(Text.assemble(*parts))


def _print_invalid(file: Path, problems: list[str], as_json: bool) -> None:
    if as_json:
        echo(_to_json(valid=False, problems=problems))
        return
    out = _Printer()
    count = len(problems)
    what = []
    if any(not line.startswith("--tools: ") for line in problems):
        what.append("invalid policy")
    if any(line.startswith("--tools: ") for line in problems):
        what.append("tools not loaded")
    head = f"{out.cross} {file}: {' and '.join(what)} ({count} problem{'s' if count != 1 else ''})"
    out.line(out.text(head, "bold red"))
    for problem in problems:
        out.line(out.text(problem))


def _print_report(
    file: Path, report: Report, as_json: bool, registered_from: list[object] | None
) -> None:
    if as_json:
        echo(_to_json(valid=True, problems=[], report=report))
        return
    out = _Printer()
    out.line(out.text(f"{out.tick} {file}: valid policy", "bold green"))
    out.line()
    out.line(out.text("Production readiness", "bold"))
    for item in report.items:
        if item.met:
            out.line(out.text(f"  {out.tick} ", "green"), out.text(item.title))
        else:
            out.line(out.text(f"  {out.cross} ", "red"), out.text(item.title))
            out.line(out.text(f"      why: {item.why}", "dim"))
            out.line(out.text(f"      fix: {item.hint}", "yellow"))
    if report.tools:
        out.line()
        out.line(out.text("Per tool (the field guide's decision aid)", "bold"))
        for needs in report.tools:
            _print_tool(out, needs)
        if registered_from is None:
            out.line(
                out.text(
                    "  (judged from the policy alone; --tools MODULE:OBJECT adds what the code"
                    " declares: effects, costs, argument schemas, credentials)",
                    "dim",
                )
            )
    if report.warnings:
        out.line()
        out.line(out.text("Warnings", "bold"))
        for warning in report.warnings:
            out.line(out.text(f"  {out.bang} ", "yellow"), out.text(warning))
    out.line()
    summary = report.summary
    if report.tools_summary:
        summary += f", {report.tools_summary}"
    if report.warnings:
        n = len(report.warnings)
        summary += f", {n} warning{'s' if n != 1 else ''}"
    out.line(out.text(summary, "bold green" if report.ready else "bold yellow"))


def _print_tool(out: _Printer, needs: ToolNeeds) -> None:
    if not needs.details:
        out.line(
            out.text(f"  {out.tick} ", "green"),
            out.text(f"{needs.name}: reads, in a closed world; nothing more needed"),
        )
        return
    mark = (out.cross, "red") if needs.missing else (out.tick, "green")
    out.line(
        out.text(f"  {mark[0]} ", mark[1]), out.text(f"{needs.name}: {'; '.join(needs.because)}")
    )
    has = [need.key for need in needs.details if need.met]
    if has:
        out.line(out.text(f"      has {', '.join(has)}", "dim"))
    for need in needs.details:
        if not need.met:
            out.line(out.text(f"      missing {need.key}: {need.hint}", "yellow"))


def _to_json(*, valid: bool, problems: list[str], report: Report | None = None) -> str:
    body: dict[str, Any] = {
        "valid": valid,
        "problems": problems,
        "items": [item.to_dict() for item in report.items] if report else [],
        "tools": [needs.to_dict() for needs in report.tools] if report else [],
        "warnings": list(report.warnings) if report else [],
    }
    return json.dumps(body, indent=2, ensure_ascii=not _is_utf(sys.stdout.encoding))


def main(argv: list[str] | None = None) -> None:
    """``python -m corral.cli.check FILE ...``: the same command, on its own."""
    alone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    alone.command()(check)
    alone(args=argv, prog_name="corral check")


if __name__ == "__main__":
    main()
