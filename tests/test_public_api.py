"""The public API stays curated: ``__all__`` sorted and complete, types shipped, README runs."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.resources
import inspect
import io
import pickle
import re
import traceback
import types
import typing
from pathlib import Path

import pytest

import corral
import corral.testing

EXPECTED = {
    "STOP_REASONS",
    "ApprovalDecision",
    "AccessError",
    "ApprovalError",
    "Forbidden",
    "InvalidKey",
    "ApprovalRequest",
    "AsyncRun",
    "CallInfo",
    "Charge",
    "Clock",
    "ConfigError",
    "ControlSignal",
    "CorralError",
    "EnvSecrets",
    "FileSecrets",
    "Limits",
    "Model",
    "ModelCall",
    "ModelOutputError",
    "ModelRequest",
    "ModelResponse",
    "NotExecuted",
    "Policy",
    "PolicyError",
    "Price",
    "ReplayResult",
    "WhatIf",
    "Run",
    "RunResult",
    "SecretProvider",
    "Services",
    "Stop",
    "StopInfo",
    "StopReason",
    "Store",
    "StoreError",
    "SystemClock",
    "Ticket",
    "Tool",
    "ToolCallRequest",
    "ToolContext",
    "ToolDefinitionError",
    "ToolRejected",
    "Usage",
    "__version__",
    "arun",
    "load_policy",
    "open_store",
    "replay",
    "whatif",
    "run",
    "tool",
}

EXPECTED_TESTING = {
    "HOSTILE_PAYLOADS",
    "CapturedEvents",
    "FunctionModel",
    "capture_events",
    "Execution",
    "FaultyModel",
    "FaultyStore",
    "FaultyTool",
    "GullibleModel",
    "flaky_tool",
    "garbage_tool",
    "hanging_tool",
    "hostile_tool",
    "huge_tool",
    "raising_tool",
    "slow_tool",
    "ManualClock",
    "MemoryStore",
    "ScriptedModel",
    "Turn",
    "call",
    "error",
    "final",
    "malformed",
    "prices",
    "raw_call",
    "slow",
    "truncated",
    "turn",
}

README = Path(__file__).parent.parent / "README.md"


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("module", [corral, corral.testing], ids=["corral", "corral.testing"])
def test_all_is_sorted(module: types.ModuleType) -> None:
    """__all__ is sorted (constants, classes, then functions) with no duplicates."""
    assert module.__all__ == sorted(module.__all__, key=isort_order)
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("module", [corral, corral.testing], ids=["corral", "corral.testing"])
def test_every_name_in_all_exists(module: types.ModuleType) -> None:
    """Every name __all__ promises can be imported."""
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_all_is_exactly_the_expected_public_api() -> None:
    """corral.__all__ is exactly the curated set: nothing missing, nothing extra."""
    assert set(corral.__all__) == EXPECTED


def test_testing_all_is_exactly_the_expected_fakes() -> None:
    """corral.testing.__all__ is exactly the curated set of fakes and helpers."""
    assert set(corral.testing.__all__) == EXPECTED_TESTING


@pytest.mark.parametrize(
    ("module", "origin"),
    [(corral, "corral"), (corral.testing, "corral.testing")],
    ids=["corral", "corral.testing"],
)
def test_nothing_public_is_left_out_of_all(module: types.ModuleType, origin: str) -> None:
    """Every public class or function the module exports is listed in __all__."""
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith(origin)
    }
    assert public - set(module.__all__) == set()


def test_stop_reasons_are_exported_as_the_stop_reason_type() -> None:
    """STOP_REASONS holds exactly the values of the StopReason type."""
    from typing import get_args

    assert get_args(corral.StopReason) == corral.STOP_REASONS


def test_exception_families_are_kept_apart() -> None:
    """Config errors, stops, control signals and store errors share only CorralError."""
    assert issubclass(corral.PolicyError, corral.ConfigError)
    assert issubclass(corral.ToolDefinitionError, corral.ConfigError)
    assert issubclass(corral.NotExecuted, corral.ControlSignal)
    assert issubclass(corral.ToolRejected, corral.ControlSignal)
    families = [corral.ConfigError, corral.Stop, corral.ControlSignal, corral.StoreError]
    for family in families:
        assert issubclass(family, corral.CorralError)
        assert [f for f in families if issubclass(family, f)] == [family]


def test_the_version_matches_the_installed_distribution() -> None:
    """corral.__version__ is the version the package was installed as."""
    assert corral.__version__ == importlib.metadata.version("corral")


def test_py_typed_is_shipped() -> None:
    """The package carries the py.typed marker, so type checkers use its annotations."""
    assert importlib.resources.files("corral").joinpath("py.typed").is_file()


def test_the_wheel_includes_the_whole_package_directory() -> None:
    """The wheel is built from the package directory that holds py.typed."""
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'packages\s*=\s*\["src/corral"\]', pyproject)
    assert (Path(__file__).parent.parent / "src" / "corral" / "py.typed").is_file()


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_examples_run_and_print_what_they_say() -> None:
    """The README's Python blocks run in order and print what their comments show."""
    if not README.exists():
        pytest.skip("README.md is not written yet")
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip("README.md has no python code block yet")
    expected = [
        m.group(1).strip()
        for block in blocks
        for m in re.finditer(r"^print\(.*\)\s+#\s*(.+)$", block, flags=re.M)
    ]
    namespace: dict[str, object] = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    printed = [line.strip() for line in out.getvalue().splitlines()]
    assert printed[: len(expected)] == expected


def _defined_in_corral(module: types.ModuleType) -> list[str]:
    return [
        name
        for name in module.__all__
        if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))
    ]


@pytest.mark.parametrize(
    ("module", "home"),
    [(corral, "corral"), (corral.testing, "corral.testing")],
    ids=["corral", "corral.testing"],
)
def test_public_names_say_the_path_users_import_from(module: types.ModuleType, home: str) -> None:
    """Every public class and function defined under a package names that package as its
    module, so reprs, tracebacks and pickles show ``corral.Run``."""
    names = _defined_in_corral(module)
    assert names
    wrong = {
        name: getattr(module, name).__module__
        for name in names
        if getattr(module, name).__module__ != home
        # The in-memory store and the manual clock keep their own homes.
        and not (module is corral.testing and name in {"ManualClock", "MemoryStore"})
    }
    assert wrong == {}


def test_reprs_and_tracebacks_name_corral() -> None:
    """repr(corral.Run) and a Stop's traceback name the public path, not an internal module."""
    assert repr(corral.Run) == "<class 'corral.Run'>"
    assert repr(corral.AsyncRun) == "<class 'corral.AsyncRun'>"
    assert repr(corral.testing.ScriptedModel) == "<class 'corral.testing.ScriptedModel'>"
    try:
        raise corral.Stop("tool_denied", detail="browser.open")
    except corral.Stop as stop:
        text = "".join(traceback.format_exception(stop))
    assert text.splitlines()[-1] == "corral.Stop: tool_denied:browser.open"


@corral.tool(effect="read")
def search(q: str) -> str:
    """Echo the query (a tool the policies below do not allow)."""
    return q


def _stamped_stop() -> tuple[corral.Stop, str]:
    policy = corral.Policy.from_dict({"tools": {"allow": []}})
    with corral.Run(policy, tools=[search], store="memory://") as run:
        try:
            run.call("search", {"q": "x"})
        except corral.Stop as stop:
            return stop, run.id
    raise AssertionError("the call was not stopped")


def test_a_stop_round_trips_through_pickle_as_corral_stop() -> None:
    """A Stop pickles by its public path and comes back whole, its run id included."""
    stop, run_id = _stamped_stop()
    # The class by its public path (rebuilt by corral.exceptions, which every corral
    # exception pickles through: see tests/test_pickling.py).
    assert b"ccorral\nStop\n" in pickle.dumps(stop, protocol=0)
    back = pickle.loads(pickle.dumps(stop))
    assert type(back) is corral.Stop
    assert back.info == stop.info
    assert back.run_id == run_id
    assert str(back) == str(stop)
    assert copy.copy(stop).run_id == run_id
    assert copy.deepcopy(stop).info == stop.info


def test_stop_declares_the_run_it_ended() -> None:
    """A Stop raised by a run carries that run's id; one raised by hand carries None."""
    stop, run_id = _stamped_stop()
    assert stop.run_id == run_id
    assert corral.Stop("max_steps", "run").run_id is None


def test_public_values_pickle_by_their_public_path() -> None:
    """A policy and a model request pickle by corral's path and compare equal after."""
    policy = corral.Policy.from_dict({"tools": {"allow": ["kb.read"]}})
    assert pickle.loads(pickle.dumps(policy)) == policy
    assert b"ccorral\nPolicy\n" in pickle.dumps(policy, protocol=0)
    request = corral.ModelRequest(
        messages=({"role": "user", "content": "hi"},), tools=(), max_tokens=9
    )
    assert pickle.loads(pickle.dumps(request)) == request


@pytest.mark.parametrize("module", [corral, corral.testing], ids=["corral", "corral.testing"])
def test_type_hints_of_public_names_resolve(module: types.ModuleType) -> None:
    """typing.get_type_hints works on every public class and function after the rename."""
    for name in _defined_in_corral(module):
        typing.get_type_hints(getattr(module, name))


def test_a_subclass_of_a_public_model_builds() -> None:
    """A user's subclass of Policy (a pydantic model shown as corral.Policy) still builds."""

    class Mine(corral.Policy):
        team: str = "ops"

    assert Mine().team == "ops"
    assert typing.get_type_hints(Mine)["budgets"] is type(corral.Policy().budgets)
