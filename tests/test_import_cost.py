"""`import corral` stays cheap: heavy modules load on first use, every public name still
resolves, says ``corral.X``, and resolves safely from several threads at once.

The checks that need a fresh interpreter run one in a subprocess; none of them times
anything (the figure is bench/import_time.py's).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral
from corral._public import LazyNames
from sources import gc_paused

# What ``import corral`` must not load: the policy model and its validators, YAML, the HTML
# stripper, the price table, the CLI, the SQLite and PostgreSQL backends, the metrics
# exporter, the HTTP client, and the machinery behind Run.
HEAVY = (
    "pydantic",
    "jsonschema",
    "yaml",
    "bs4",
    "genai_prices",
    "typer",
    "rich",
    "click",
    "psycopg",
    "prometheus_client",
    "httpx",
    "asyncio",
    "corral.cli",
    "corral.policy",
    "corral.gateway",
    "corral.loop",
    "corral.stores",
    "corral.stores.sqlite",
    "corral.stores.postgres",
)

# What a first Policy.from_dict and Run on memory:// must still not load.
HEAVY_FOR_A_FIRST_RUN = (
    "jsonschema",
    "yaml",
    "bs4",
    "genai_prices",
    "typer",
    "rich",
    "click",
    "psycopg",
    "prometheus_client",
    "httpx",
    "corral.cli",
    "corral.stores.sqlite",
    "corral.stores.postgres",
)


def _python(code: str) -> object:
    """Run ``code`` in a fresh interpreter; return what it printed, read as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _loaded(modules: tuple[str, ...]) -> str:
    return f"sorted(m for m in {modules!r} if m in sys.modules)"


def test_import_corral_loads_none_of_the_heavy_modules() -> None:
    """``import corral`` loads the exceptions, stop reasons and clock, nothing heavy."""
    loaded = _python(f"import corral, sys, json; print(json.dumps({_loaded(HEAVY)}))")
    assert loaded == []


def test_a_first_run_on_memory_loads_no_yaml_jsonschema_cli_or_sqlite_backend() -> None:
    """A policy from a dict and a Run on ``memory://`` load what they use, no more."""
    loaded = _python(
        f"""
        import corral, sys, json
        policy = corral.Policy.from_dict({{"tools": {{"allow": ["kb.read"]}}}})
        with corral.Run(policy, store="memory://") as run:
            pass
        print(json.dumps({_loaded(HEAVY_FOR_A_FIRST_RUN)}))
        """
    )
    assert loaded == []


def test_the_test_kit_loads_no_http_client_cli_or_sqlite_backend() -> None:
    """``import corral.testing`` (the fakes users' own tests import) leaves out httpx, which
    only the model adapters' calls need, and the rest of what a first run does not use."""
    loaded = _python(
        f"import corral.testing, sys, json; print(json.dumps({_loaded(HEAVY_FOR_A_FIRST_RUN)}))"
    )
    assert loaded == []


def test_every_public_name_resolves_in_a_fresh_interpreter() -> None:
    """Every name of ``corral.__all__`` imports with ``from corral import X``, is in
    ``dir(corral)`` before it is loaded, says ``corral`` as its module and has type hints
    that resolve (taken in reverse order: the order of first use does not matter)."""
    out = _python(
        """
        import inspect, json, sys, typing
        import corral
        listed = set(dir(corral)) >= set(corral.__all__)
        homes = {}
        for name in reversed(corral.__all__):
            exec(f"from corral import {name} as value", globals())
            if inspect.isclass(value) or inspect.isfunction(value):
                typing.get_type_hints(value)
                homes[name] = value.__module__
        print(json.dumps({"listed": listed, "homes": homes, "cli": "corral.cli" in sys.modules}))
        """
    )
    assert isinstance(out, dict)
    assert out["listed"] is True
    assert out["cli"] is False
    assert set(out["homes"].values()) == {"corral"}
    assert {"Run", "Policy", "Services", "tool", "open_store", "Stop"} <= set(out["homes"])


def test_what_a_run_loads_is_presented_with_it() -> None:
    """After ``corral.Run`` alone, the policy class it loaded already says ``corral.Policy``
    and pickles by that path, as when ``import corral`` imported everything."""
    out = _python(
        """
        import json, pickle, sys
        import corral
        corral.Run
        schema = sys.modules["corral.policy.schema"]
        policy = schema.Policy.from_dict({})
        pickled = pickle.dumps(policy, 0)
        print(json.dumps([schema.Policy.__module__, b"ccorral\\nPolicy\\n" in pickled]))
        """
    )
    assert out == ["corral", True]


def test_the_lazy_table_and_the_type_checkers_imports_agree() -> None:
    """Every public name is imported at once or listed in ``corral._LAZY``, which names the
    module the ``TYPE_CHECKING`` imports take it from; that module's object is ``corral``'s."""
    with gc_paused():  # no finalizer inside ast.parse (tests/sources.py)
        tree = ast.parse(Path(corral.__file__).read_text(encoding="utf-8"))
    for_checkers = {
        alias.asname or alias.name: node.module
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "_typing.TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    lazy: dict[str, str] = corral._LAZY  # type: ignore[attr-defined]
    assert for_checkers == lazy
    at_once = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert set(corral.__all__) == set(lazy) | (at_once & set(corral.__all__))
    assert not set(lazy) & at_once
    for name, home in lazy.items():
        assert getattr(importlib.import_module(home), name) is getattr(corral, name)


def test_unknown_names_and_submodules() -> None:
    """An unknown name is an AttributeError naming it; submodules still import by name."""
    import corral

    with pytest.raises(AttributeError, match="'corral' has no attribute 'Rnu'"):
        corral.Rnu  # noqa: B018  (the lookup is the test)
    from corral import _safe, stores

    assert _safe.__name__ == "corral._safe"
    assert stores.SQLiteStore.__name__ == "SQLiteStore"
    with pytest.raises(AttributeError, match=r"'corral\.stores' has no attribute 'Nope'"):
        stores.Nope  # noqa: B018


def test_public_names_resolve_once_from_many_threads_in_a_fresh_interpreter() -> None:
    """Threads that touch ``corral.X`` first at the same moment all get the same, fully
    presented object."""
    out = _python(
        """
        import json, threading
        import corral
        names = ["Run", "Policy", "AsyncRun", "Services", "tool", "open_store", "Run", "Policy"]
        barrier = threading.Barrier(len(names))
        seen = [None] * len(names)
        def touch(i):
            barrier.wait()
            value = getattr(corral, names[i])
            seen[i] = (id(value), value.__module__)
        threads = [threading.Thread(target=touch, args=(i,)) for i in range(len(names))]
        for t in threads: t.start()
        for t in threads: t.join()
        same = all(seen[i][0] == id(getattr(corral, n)) for i, n in enumerate(names))
        print(json.dumps({"same": same, "modules": sorted({m for _, m in seen})}))
        """
    )
    assert out == {"same": True, "modules": ["corral"]}


# -- LazyNames on a package of its own, whose module is slow to import --------------------
@pytest.fixture
def slow_package(tmp_path: Path) -> Iterator[str]:
    """A package ``lazyprobe`` whose ``lazyprobe.slow`` takes 0.2 s to import."""
    root = tmp_path / "lazyprobe"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "slow.py").write_text(
        "import time\ntime.sleep(0.2)\n\n"
        "class Thing:\n    pass\n\n"
        "def make():\n    return Thing()\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield "lazyprobe"
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "lazyprobe" or m.startswith("lazyprobe.")]:
            del sys.modules[name]


def test_lazy_names_resolve_once_and_presented_under_a_race(slow_package: str) -> None:
    """Eight threads resolving names of one slow module at once all see the same objects,
    each already presented as the package's, and the namespace holds them afterwards."""
    namespace: dict[str, object] = {}
    lazy = LazyNames(
        slow_package,
        namespace,
        ["Thing", "make"],
        {"Thing": f"{slow_package}.slow", "make": f"{slow_package}.slow"},
    )
    barrier = threading.Barrier(8)
    seen: list[tuple[object, str]] = []
    lock = threading.Lock()

    def touch(name: str) -> None:
        barrier.wait()
        value = lazy.resolve(name)
        module = value.__module__
        with lock:
            seen.append((value, module))

    threads = [threading.Thread(target=touch, args=(("Thing", "make")[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8
    assert {module for _, module in seen} == {slow_package}
    assert {id(value) for value, _ in seen} == {id(namespace["Thing"]), id(namespace["make"])}
    assert lazy.names() == ["Thing", "make"]
    with pytest.raises(AttributeError, match="has no attribute 'other'"):
        lazy.resolve("other")
