"""Stores that cannot be opened, and SQLite files removed or replaced under a running
agent: the run stops ``control_plane_unavailable`` saying why, inside the run (a result,
not an exception), and commands that only read or change operator state never create a
store that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.stores import open_store
from corral.stores.sqlite import SQLiteStore
from corral.testing import ScriptedModel, call, final

POLICY = corral.Policy.from_dict(
    {
        "tools": {"allow": ["kb.read"]},
        "budgets": {"max_tool_calls": 100_000, "max_steps": 100_000},
    }
)


@corral.tool(name="kb.read", effect="read")
def kb(q: str = "") -> str:
    return "fact"


# -- stores that cannot be opened --------------------------------------------------------------


def _text(d: Path) -> str:
    (d / "text.db").write_text("hello, not a database\n")
    return f"sqlite:///{d / 'text.db'}"


def _directory(d: Path) -> str:
    (d / "dir.db").mkdir()
    return f"sqlite:///{d / 'dir.db'}"


def _garbage(d: Path) -> str:
    (d / "garbage.db").write_bytes(os.urandom(4096))
    return f"sqlite:///{d / 'garbage.db'}"


def _truncated(d: Path) -> str:
    good = d / "good.db"
    SQLiteStore(good).close()
    (d / "truncated.db").write_bytes(good.read_bytes()[:100])
    return f"sqlite:///{d / 'truncated.db'}"


def _no_permission(d: Path) -> str:
    if os.geteuid() == 0:
        # root reads any file: a read-only file system refuses everyone.
        return "sqlite:////proc/corral-test.db"
    (d / "locked").mkdir()
    os.chmod(d / "locked", 0)
    return f"sqlite:///{d / 'locked' / 'corral.db'}"


def _missing_directory(d: Path) -> str:
    return f"sqlite:///{d / 'no' / 'such' / 'dir' / 'corral.db'}"


def _closed_port(d: Path) -> str:
    return "postgresql://nobody:secret@127.0.0.1:1/corral?connect_timeout=2"


UNOPENABLE: dict[str, Callable[[Path], str]] = {
    "text_file": _text,
    "directory": _directory,
    "garbage": _garbage,
    "truncated": _truncated,
    "no_permission": _no_permission,
    "missing_directory": _missing_directory,
    "postgres_closed_port": _closed_port,
}


def run_face(face: str, url: str) -> corral.RunResult:
    model = ScriptedModel([call("kb.read", q="a"), final("done")])
    if face == "run":
        return corral.run("t", model=model, tools=[kb], policy=POLICY, store=url)
    if face == "arun":
        return asyncio.run(corral.arun("t", model=model, tools=[kb], policy=POLICY, store=url))
    if face == "Run":
        with corral.Run(POLICY, tools=[kb], store=url) as run:
            run.call("kb.read", {"q": "a"})
            run.finish("done")
        return run.result

    async def go() -> corral.RunResult:
        async with corral.AsyncRun(POLICY, tools=[kb], store=url) as arun:
            await arun.call("kb.read", {"q": "a"})
            await arun.finish("done")
        return arun.result

    return asyncio.run(go())


@pytest.mark.parametrize("face", ["run", "arun", "Run", "AsyncRun"])
@pytest.mark.parametrize("shape", sorted(UNOPENABLE))
def test_an_unopenable_store_stops_the_run_inside(shape: str, face: str, tmp_path: Path) -> None:
    """Every way a store can fail to open ends the run control_plane_unavailable, with a
    message naming the store (password hidden) and why; nothing runs, nothing raises,
    and no missing file or directory is created."""
    url = UNOPENABLE[shape](tmp_path)
    try:
        result = run_face(face, url)
    finally:
        if (tmp_path / "locked").exists():
            os.chmod(tmp_path / "locked", 0o700)
    assert result.stop_reason == "control_plane_unavailable"
    assert result.stop is not None and result.stop.detail == "store"
    message = result.stop.message
    assert message.startswith("cannot open the store ")
    assert "secret" not in message and "secret" not in (result.error or "")
    if url.startswith("sqlite:///"):
        assert url.removeprefix("sqlite:///") in message
    assert result.usage.tool_calls == 0
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://[bad",
        "postgresql://host:port/db",
        "nosuch://x",
        "sqlite:relative.db",
        "sqlite:////tmp/a%00b.db",
        "sqlite:///c.db?journal=off",
    ],
)
def test_a_malformed_store_url_is_a_config_error(url: str) -> None:
    """A URL no store could mean is a developer's mistake: ConfigError, raised clearly by
    the run's constructor and by corral.run."""
    with pytest.raises(corral.ConfigError):
        corral.Run(POLICY, tools=[kb], store=url)
    with pytest.raises(corral.ConfigError):
        corral.run("t", model=ScriptedModel([final("d")]), policy=POLICY, store=url)


def test_a_sqlite_path_that_is_not_a_database_returns_a_result() -> None:
    """The issue's example: a SQLite path holding text made every corral.run raise
    StoreError; it returns a result saying the file is not a database."""
    path = Path(__file__).parent / "configs" / "broken" / "invalid_yaml.yaml"
    result = run_face("run", f"sqlite:///{path}")
    assert result.stop_reason == "control_plane_unavailable"
    assert result.stop is not None and "file is not a database" in result.stop.message


# -- store files removed or replaced under a running agent -------------------------------------


def _unlink(path: Path) -> None:
    path.unlink()


def _rename_away(path: Path) -> None:
    path.rename(path.with_suffix(".old"))


def _new_empty_store(path: Path) -> None:
    path.unlink()
    SQLiteStore(path).close()  # what a command that creates a store would leave there


def _replace_by_copy(path: Path) -> None:
    shutil.copy(path, path.with_suffix(".copy"))
    os.replace(path.with_suffix(".copy"), path)


def _wal_removed(path: Path) -> None:
    Path(f"{path}-wal").unlink()


def _shm_removed(path: Path) -> None:
    Path(f"{path}-shm").unlink()


def _directory_removed(path: Path) -> None:
    shutil.rmtree(path.parent)


GONE: dict[str, Callable[[Path], None]] = {
    "unlink": _unlink,
    "rename_away": _rename_away,
    "new_empty_store": _new_empty_store,
    "replace_by_copy": _replace_by_copy,
    "wal_removed": _wal_removed,
    "shm_removed": _shm_removed,
    "directory_removed": _directory_removed,
}


@pytest.mark.parametrize("way", sorted(GONE))
def test_a_removed_or_replaced_store_file_stops_the_agent(way: str, tmp_path: Path) -> None:
    """Whichever way the store file goes (removed, renamed, replaced by a new store or a
    copy, its -wal or -shm removed, its directory removed), the agent's next actions are
    refused within a second: control_plane_unavailable, saying the file was removed or
    replaced, and no later call runs."""
    path = tmp_path / "store" / "corral.db"
    path.parent.mkdir()
    ran: list[float] = []

    @corral.tool(name="kb.read", effect="read")
    def read(q: str = "") -> str:
        ran.append(time.monotonic())
        return "fact"

    with corral.Run(POLICY, tools=[read], store=f"sqlite:///{path}") as run:
        run.call("kb.read", {"q": "before"})
        GONE[way](path)
        gone_at = time.monotonic()
        n = 0
        while time.monotonic() - gone_at < 3:
            run.call("kb.read", {"q": str(n)})
            n += 1
    result = run.result
    assert result.stop_reason == "control_plane_unavailable"
    assert result.stop is not None and not result.stop.retryable
    assert "was removed or renamed" in result.stop.message or "was replaced" in result.stop.message
    assert ran[-1] - gone_at < 1.0
    later = open_store(f"sqlite:///{path}") if path.parent.exists() else None
    if later is not None:
        # The process keeps failing closed on that URL until it restarts: no silent fresh store.
        with corral.Run(POLICY, tools=[read], store=later) as again:
            again.call("kb.read", {"q": "after"})
        assert again.result.stop_reason == "control_plane_unavailable"


AGENT = textwrap.dedent(
    """
    import json, sys, time
    import corral

    calls = []

    @corral.tool(name="kb.read", effect="read")
    def read(q: str = "") -> str:
        calls.append(time.time())
        return "fact"

    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read"]},
         "budgets": {"max_tool_calls": 1000000, "max_steps": 1000000, "max_seconds": 30}}
    )
    with corral.Run(policy, tools=[read], store=sys.argv[1]) as run:
        run.call("kb.read", {"q": "first"})
        print("ready", flush=True)
        n = 0
        while time.time() - calls[0] < 20:
            run.call("kb.read", {"q": str(n)})
            n += 1
            time.sleep(0.002)
    result = run.result
    print(json.dumps({"stop": result.stop_reason, "message": result.stop.message,
                      "last": calls[-1], "calls": len(calls)}), flush=True)
    """
)


def test_two_processes_an_agent_stops_when_its_store_file_is_deleted(tmp_path: Path) -> None:
    """An agent runs on a SQLite file in its own process; the file is deleted and an
    operator runs `corral kill enable --mode stop_all --db` on the path. The command says
    there is no store there (exit 1, nothing created) and the agent stops by itself within
    about a second, control_plane_unavailable."""
    path = tmp_path / "corral.db"
    url = f"sqlite:///{path}"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready"
        path.unlink()
        deleted_at = time.time()
        kill = subprocess.run(
            [sys.executable, "-m", "corral", "kill", "enable", "--mode", "stop_all", "--db", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out, err = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    assert kill.returncode == 1
    assert f"no corral store at {path}" in kill.stderr
    assert not path.exists()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["stop"] == "control_plane_unavailable", err
    assert "was removed or renamed" in report["message"]
    assert report["last"] - deleted_at < 1.0


# -- commands that only read or change operator state never create a store ------------------

COMMANDS: list[list[str]] = [
    ["kill", "enable", "--mode", "stop_all"],
    ["kill", "disable"],
    ["kill", "status"],
    ["runs"],
    ["show", "run_x"],
    ["approvals", "list"],
    ["approvals", "approve", "apr_x"],
    ["approvals", "deny", "apr_x"],
    ["audit", "verify"],
    ["audit", "export"],
    ["idempotency", "list"],
    ["report"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("via", ["--db", "CORRAL_DB"])
def test_an_operator_command_never_creates_a_store(
    command: list[str], via: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kill`, `runs`, `show`, `approvals`, `audit`, `idempotency` and `report` on a path
    with no store say `no corral store at <path>` and exit 1; nothing is created."""
    path = tmp_path / "missing" / "corral.db"
    url = f"sqlite:///{path}"
    args = [*command, "--db", url] if via == "--db" else command
    if via == "CORRAL_DB":
        monkeypatch.setenv("CORRAL_DB", url)
    result: Any = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"no corral store at {path}" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not path.parent.exists()


def test_demo_creates_its_store(tmp_path: Path) -> None:
    """`corral demo` runs agents: it is the command that creates a store."""
    path = tmp_path / "demo.db"
    result: Any = CliRunner().invoke(
        app, ["demo", "--json", "--runs", "3", "--db", f"sqlite:///{path}"]
    )
    assert result.exit_code == 0, result.output
    assert path.exists()
