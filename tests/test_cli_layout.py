"""The command line's layout: one typer app, command modules that share only the ``_`` modules,
and a package that loads no command until one runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import corral.cli
from sources import gc_paused

CLI = Path(corral.cli.__file__).parent
COMMANDS = sorted(
    p.stem for p in CLI.glob("*.py") if not p.stem.startswith("_") and p.stem != "app"
)


def cli_imports(path: Path) -> set[str]:
    """The ``corral.cli`` modules a file imports, at any depth (functions included)."""
    found: set[str] = set()
    with gc_paused():  # no finalizer inside ast.parse (tests/sources.py)
        tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("corral", "corral.cli"):
            names = {f"{node.module}.{alias.name}" for alias in node.names}
            found |= {n for n in names if _in_cli(n)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("corral.cli."):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _in_cli(a.name)}
    return found


def _in_cli(name: str) -> bool:
    return name == "corral.cli" or name.startswith("corral.cli.")


def test_no_command_module_imports_another() -> None:
    """A command module imports only the shared ``_`` modules: what two commands share lives
    in ``_common``, ``_format`` and the like, never in one of them."""
    for name in COMMANDS:
        others = {
            m for m in cli_imports(CLI / f"{name}.py") if not m.rpartition(".")[2].startswith("_")
        }
        assert not others, f"corral.cli.{name} imports {sorted(others)}"


def test_the_app_registers_every_command_module() -> None:
    """``app.py`` imports every command module by name (no discovery)."""
    assert cli_imports(CLI / "app.py") >= {f"corral.cli.{name}" for name in COMMANDS}


def test_no_module_outside_the_command_line_imports_it() -> None:
    """Only ``corral/__main__.py`` imports ``corral.cli``: it sits at the top."""
    source = CLI.parent
    for path in source.rglob("*.py"):
        if CLI in path.parents or path == source / "__main__.py":
            continue
        assert not cli_imports(path), path


def test_importing_the_package_loads_no_command() -> None:
    """``import corral.cli`` loads no command module, so ``python -m corral.cli.check`` runs
    that module once (no RuntimeWarning) and the entry point stays ``corral.cli:main``."""
    code = (
        "import sys, corral.cli; "
        "print(sorted(m for m in sys.modules if m.startswith('corral.cli')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "['corral.cli']"
    assert callable(corral.cli.main)
