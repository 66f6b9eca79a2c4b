"""The ``corral`` command loads a command's module only when that command runs, and behaves
exactly as the app built at once: the table of commands (corral.cli.app.COMMANDS) and the
commands cannot drift apart."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NoReturn, cast

import pytest
import typer
import typer.core
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

import corral.cli
from corral.cli._lazy import Entry, LazyGroup
from corral.cli.app import COMMANDS, app

CLI = Path(corral.cli.__file__).parent
COMMAND_MODULES = sorted(
    f"corral.cli.{p.stem}"
    for p in CLI.glob("*.py")
    if not p.stem.startswith("_") and p.stem != "app"
)


def eager_app() -> typer.Typer:
    """The app as it was built before commands loaded lazily: every command registered on
    a plain typer app, in the table's order, with the same options and settings."""
    eager = typer.Typer(
        name="corral",
        help="A production control layer for tool-calling AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    eager.registered_callback = app.registered_callback
    for name, entry in COMMANDS.items():
        target = entry.load()
        if isinstance(target, typer.Typer):
            eager.add_typer(target, name=name)
        else:
            eager.command(name)(target)
    return eager


def first_paragraph(command: Any) -> str:
    """What a group's ``--help`` lists for ``command``: its short help, else the first
    paragraph of its help."""
    text = command.short_help or command.help or ""
    return str(inspect.cleandoc(text).split("\n\n")[0])


def paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below ``command`` (itself included), by path."""
    found = [path]
    for name, sub in (getattr(command, "commands", None) or {}).items():
        found += paths(sub, (*path, name))
    return found


def outcome(target: typer.Typer, args: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``corral ARGS`` run on ``target``."""
    result = CliRunner().invoke(target, args, prog_name="corral")
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_listed_command_loads_and_is_listed_with_its_own_help(name: str) -> None:
    """Each entry of the table loads, builds a command of that name, and the line the
    table keeps for ``--help`` is the command's own (first paragraph of its help)."""
    group = cast(LazyGroup, typer.main.get_command(app))
    command = group.commands[name]
    assert command.name == name
    assert COMMANDS[name].help == first_paragraph(command), name
    assert not command.hidden and not command.deprecated  # the listing shows neither


def test_the_table_lists_every_command_module() -> None:
    """The loaders together load every command module of corral.cli, each once."""
    modules: list[str] = []
    for entry in COMMANDS.values():
        target = entry.load()
        if isinstance(target, typer.Typer):
            modules.append(target.registered_commands[0].callback.__module__)  # type: ignore[union-attr]
        elif target.__module__ != "corral.cli.app":  # corral version lives in app.py
            modules.append(target.__module__)
    assert sorted(modules) == COMMAND_MODULES


def test_the_app_lists_the_same_commands_in_the_same_order_as_built_at_once() -> None:
    """``corral --help`` lists what the app built at once lists, in the same order (the
    commands, then the groups)."""
    lazy = typer.main.get_command(app)
    eager = typer.main.get_command(eager_app())
    assert list(cast(TyperGroup, lazy).commands) == list(cast(TyperGroup, eager).commands)
    assert sorted(paths(lazy)) == sorted(paths(eager))


def test_every_help_page_is_the_same_as_built_at_once() -> None:
    """``corral [PATH] --help`` prints the same page, byte for byte, for the app and for
    the app built at once, for the top level, every group and every command."""
    eager = eager_app()
    every = paths(typer.main.get_command(eager))
    assert len(every) > len(COMMANDS)
    for path in every:
        args = [*path, "--help"]
        assert outcome(app, args) == outcome(eager, args), args


def test_plain_help_pages_are_the_same_as_built_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without rich (``TYPER_USE_RICH=0``), click's plain help lists the same commands with
    the same shortened lines."""
    monkeypatch.setattr(typer.core, "HAS_RICH", False)
    eager = eager_app()
    for args in (["--help"], [], ["kill", "--help"], ["version", "--help"]):
        lazy_out = outcome(app, args)
        assert lazy_out == outcome(eager, args), args
        assert "╭" not in lazy_out[1] + lazy_out[2]  # the plain page indeed


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--version"],
        ["version"],
        ["kill"],
        ["audit"],
        ["kil"],
        ["nosuch"],
        ["check"],
        ["check", "--nosuch"],
        ["kill", "enable", "--mode"],
        ["--nosuch"],
    ],
    ids=lambda args: " ".join(args) or "(none)",
)
def test_usage_and_errors_are_the_same_as_built_at_once(args: list[str]) -> None:
    """No arguments, the version, a group without a subcommand, a typo (and its
    suggestion), an unknown command or option, a missing argument: the same output and
    exit code as the app built at once."""
    assert outcome(app, args) == outcome(eager_app(), args)


def test_the_commands_a_shell_would_complete_are_the_same_as_built_at_once() -> None:
    """The group's completion of a command name offers the same names and help lines."""
    lazy = typer.main.get_command(app)
    eager = typer.main.get_command(eager_app())
    for incomplete in ("", "k", "i", "--"):
        offered = []
        for group in (lazy, eager):
            ctx = group.make_context("corral", [], resilient_parsing=True)
            offered.append([(c.value, c.help) for c in group.shell_complete(ctx, incomplete)])
        assert offered[0] == offered[1], incomplete


def _unloadable(name: str) -> Callable[[], NoReturn]:
    def load() -> NoReturn:
        raise AssertionError(f"listing the commands loaded {name}")

    return load


def test_listing_the_commands_loads_none() -> None:
    """``corral --help``, ``corral`` alone and a typo's suggestion read the table alone:
    with loaders that fail, they print what the app prints."""

    class Unloadable(LazyGroup):
        entries: ClassVar[Mapping[str, Entry]] = {
            name: Entry(help=entry.help, load=_unloadable(name)) for name, entry in COMMANDS.items()
        }

    listing_only = typer.Typer(
        name="corral",
        help="A production control layer for tool-calling AI agents.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        cls=Unloadable,
    )
    listing_only.registered_callback = app.registered_callback
    for args in (["--help"], [], ["kil"], ["--version"]):
        assert outcome(listing_only, args) == outcome(app, args), args


def _loaded_by(*args: str) -> dict[str, Any]:
    """The modules a fresh ``corral ARGS`` has loaded when it exits, and its exit code."""
    code = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        sys.argv = ["corral", *{list(args)!r}]
        from corral.cli import main
        code = 0
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
            except SystemExit as exc:
                code = exc.code
        print(json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return cast(dict[str, Any], json.loads(done.stdout))


def _under(modules: list[str], *names: str) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


# What neither `corral --help` nor `corral version` loads.
HEAVY = (
    "pydantic",
    "pydantic_core",
    "yaml",
    "jsonschema",
    "httpx",
    "sqlite3",
    "psycopg",
    "genai_prices",
    "prometheus_client",
    "platformdirs",
    "corral.policy",
    "corral.gateway",
    "corral.loop",
    "corral.stores",
    "corral.controls",
    "corral.record",
    "corral.budgets",
    "corral.models",
    "corral.sim",
)


@pytest.mark.parametrize(
    ("args", "code"), [(["--help"], 0), (["version"], 0), ([], 2)], ids=["--help", "version", "-"]
)
def test_help_and_version_load_no_command_and_nothing_heavy(args: list[str], code: int) -> None:
    """``corral --help``, ``corral version`` and ``corral`` alone (its help, exit 2) load no
    command module, no pydantic (typer's own help flag included), no store, gateway or
    policy."""
    found = _loaded_by(*args)
    assert found["code"] == code
    modules = found["modules"]
    assert _under(modules, *COMMAND_MODULES, "corral.cli._common") == []
    assert _under(modules, *HEAVY) == []


def test_version_loads_no_rich() -> None:
    """``corral version`` prints a line: rich (the help pages' renderer) stays unloaded."""
    assert _under(_loaded_by("version")["modules"], "rich") == []


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["kill", "--help"], "corral.cli.kill"),
        (["check", "--help"], "corral.cli.check"),
        (["approvals", "list", "--help"], "corral.cli.approvals"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_command_loads_its_own_module_only(args: list[str], module: str) -> None:
    """Naming a command (here for its own help) loads its module and no other command's."""
    found = _loaded_by(*args)
    assert found["code"] == 0
    assert _under(found["modules"], *COMMAND_MODULES) == [module]


def test_check_loads_no_store() -> None:
    """``corral check FILE`` touches no store: it loads neither the stores nor another
    command's module (the shared options import the stores only to open one)."""
    policy = Path(__file__).parent / "configs" / "reference.yaml"
    found = _loaded_by("check", str(policy))
    assert found["code"] == 0
    assert _under(found["modules"], "corral.stores", "sqlite3") == []
    assert _under(found["modules"], *COMMAND_MODULES) == ["corral.cli.check"]
