"""The architecture is checked, not hoped for: import-linter's contracts (pyproject.toml,
docs/architecture.md) hold for the source, and they do fail when a layer is crossed or a
cycle is made — imports inside functions and under TYPE_CHECKING included."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sources import gc_paused

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package under ``root/src``, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [str(LINT), str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project's source and contracts to break on purpose."""
    root = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "pyproject.toml", root)
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_source_keeps_every_contract() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def _breaks(copy: Path, path: str, line: str, contract: str) -> None:
    target = copy / "src" / "corral" / path
    original = target.read_text()
    try:
        target.write_text(original + "\n" + line + "\n")
        result = lint(copy)
    finally:
        target.write_text(original)
    assert result.returncode != 0, result.stdout
    assert contract in result.stdout, result.stdout


def test_a_cycle_hidden_in_a_function_fails(copy: Path) -> None:
    """The run state imports the canonical digest; the digest importing the run state back,
    inside a function, is still a cycle between siblings."""
    _breaks(
        copy,
        "gateway/canonical.py",
        "def _late() -> None:\n    from corral.gateway import state  # noqa: F401",
        "No import cycles",
    )


def test_a_cycle_under_type_checking_fails(copy: Path) -> None:
    _breaks(
        copy,
        "gateway/effective.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from corral.gateway import chain",
        "No import cycles",
    )


def test_a_model_adapter_importing_the_loop_fails(copy: Path) -> None:
    _breaks(copy, "models/base.py", "import corral.loop.run", "Model adapters")


def test_a_store_importing_a_guard_fails(copy: Path) -> None:
    _breaks(copy, "stores/memory/state.py", "import corral.gateway.guards", "Stores import no")


def test_production_code_importing_the_testing_kit_fails(copy: Path) -> None:
    _breaks(copy, "record/audit.py", "import corral.testing", "corral.testing")


def test_the_architecture_doc_names_every_module_and_no_other() -> None:
    """docs/architecture.md has one line per module: a module added, moved or removed is
    seen there."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^\| `(corral/[\w/]+\.py)` \|", doc, flags=re.M))
    source = {
        str(p.relative_to(ROOT / "src"))
        for p in (ROOT / "src" / "corral").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(source - named) == [], "modules the document does not name"
    assert sorted(named - source) == [], "modules the document names that do not exist"


#: The most lines a module may have, and a function (its ``def`` line to its last line).
MODULE_LINES = 500
FUNCTION_LINES = 80


def oversized(package: Path) -> list[str]:
    """Every module of ``package`` over :data:`MODULE_LINES` lines and every function, at
    any nesting, over :data:`FUNCTION_LINES`, each with its size."""
    found = []
    paths = sorted(package.rglob("*.py"))
    texts = {path: path.read_text(encoding="utf-8") for path in paths}
    with gc_paused():  # no finalizer inside ast.parse (tests/sources.py)
        trees = {path: ast.parse(texts[path], filename=str(path)) for path in paths}
    for path in paths:
        name = path.relative_to(package).as_posix()
        text = texts[path]
        lines = len(text.splitlines())
        if lines > MODULE_LINES:
            found.append(f"{name}: {lines} lines (most {MODULE_LINES})")
        for node in ast.walk(trees[path]):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > FUNCTION_LINES:
                    found.append(
                        f"{name}:{node.lineno} {node.name}: {size} lines (most {FUNCTION_LINES})"
                    )
    return found


def test_no_module_or_function_is_too_long() -> None:
    """A module passes 500 lines or a function 80 only by being split."""
    offenders = oversized(ROOT / "src" / "corral")
    assert offenders == [], "split these:\n" + "\n".join(offenders)


def test_a_long_module_or_function_is_named(tmp_path: Path) -> None:
    """The size check finds a module over the limit and a nested function over it."""
    package = tmp_path / "corral"
    (package / "gateway").mkdir(parents=True)
    (package / "gateway" / "chain.py").write_text("x = 1\n" * 600)
    (package / "big.py").write_text("x = 1\n" * 501)
    body = "".join(f"        y{i} = {i}\n" for i in range(80))
    (package / "nested.py").write_text(f"class A:\n    async def f(self) -> None:\n{body}")
    (package / "fine.py").write_text("def g() -> None:\n" + "    pass\n" * 79)
    assert oversized(package) == [
        "big.py: 501 lines (most 500)",
        "gateway/chain.py: 600 lines (most 500)",
        "nested.py:2 f: 81 lines (most 80)",
    ]
