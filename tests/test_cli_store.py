"""Which store the command line uses: one per user by default (shared by scripts and shells in
any directory), named by every command that touches state, never created by a command that
only reads or changes operator state, and near-miss URLs answered with what they meant."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from clitree import commands, with_option
from corral.cli.app import app
from corral.stores import open_store
from corral.stores.base import ApprovalRecord, KeyRecord
from corral.testing import ScriptedModel, final

#: Arguments that make each command touching state do its work (``{run}``: a run's id).
ARGS: dict[tuple[str, ...], list[str]] = {
    ("init",): [],
    ("demo",): ["--runs", "1"],
    ("runs",): [],
    ("show",): ["{run}"],
    ("report",): [],
    ("drift",): ["--window", "1h"],
    ("replay",): ["{run}"],
    ("whatif",): [
        "--policy",
        str(Path(__file__).parent / "fixtures" / "policies" / "stricter.yaml"),
    ],
    ("prune",): ["--older-than", "30d"],
    ("audit", "verify"): [],
    ("audit", "checkpoint"): ["--out", "{tmp}/anchor.json"],
    ("audit", "export"): [],
    ("kill", "enable"): ["--mode", "stop_all"],
    ("kill", "disable"): [],
    ("kill", "status"): [],
    ("approvals", "list"): [],
    ("approvals", "show"): ["apr_1"],
    ("approvals", "approve"): ["apr_1", "--as", "alice"],
    ("approvals", "deny"): ["apr_1", "--as", "alice"],
    ("idempotency", "list"): [],
    ("idempotency", "resolve"): ["k", "--outcome", "failed"],
    ("keys", "create"): ["--tenant", "acme", "--role", "agent"],
    ("keys", "list"): [],
    ("keys", "revoke"): ["0123456789abcdef"],
    ("mcp", "diff"): [],
    ("mcp", "approve-definition"): ["ledger.notes", "--lock", "{tmp}/lock.json"],
    ("mcp", "reject-definition"): ["ledger.notes"],
    ("golden", "run"): [
        str(Path(__file__).parent.parent / "examples" / "golden" / "support.yaml"),
        "--model",
        "scripted",
    ],
}
#: Commands that take --db but run until stopped (their store line: tests/test_serve.py;
#: ``corral mcp serve``'s: tests/test_mcp_proxy.py, which runs it over stdio and HTTP).
SERVING = {("serve",), ("mcp", "serve")}
#: The commands that create the store they name (the others refuse a missing one).
CREATES = {("init",), ("demo",), ("golden", "run")}
#: Commands whose exit 1 means something else (``corral drift``: a figure drifted): a store
#: missing or unreachable is an error there, exit 2.
ONE_MEANS_MORE = {("drift",)}


def failed(path: tuple[str, ...]) -> int:
    """The exit code of a failed operation for the command at ``path``."""
    return 2 if path in ONE_MEANS_MORE else 1


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(env=env).invoke(app, list(args))


def args_for(path: tuple[str, ...], run_id: str, tmp: Path) -> list[str]:
    return [a.format(run=run_id, tmp=tmp) for a in ARGS[path]]


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, str]:
    """A SQLite store holding one finished run, one pending approval and one API key: URL
    and run id."""
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    result = corral.run(
        "t", model=ScriptedModel([final("done")]), policy=corral.Policy.from_dict({}), store=url
    )
    open_store(url).create_approval(
        ApprovalRecord(
            id="apr_1",
            run_id=result.run_id,
            tool="mail.send",
            args_digest="d",
            arguments={},
            expires=time.time() + 600,
        )
    )
    open_store(url).add_key(
        KeyRecord(id="0123456789abcdef", tenant="acme", role="agent", digest="0" * 64, created=1.0)
    )
    return url, result.run_id


def test_every_command_touching_state_is_covered_here() -> None:
    """The commands that take --db are exactly those listed in ARGS (a new one must be)."""
    assert with_option("--db") == set(ARGS) | SERVING


@pytest.mark.parametrize("path", sorted(ARGS), ids=" ".join)
def test_every_command_names_its_store_once_on_stderr(
    path: tuple[str, ...], recorded: tuple[str, str], tmp_path: Path
) -> None:
    """Human output: the first line on stderr is ``store: URL``; stdout never has it."""
    url, run_id = recorded
    result = invoke(*path, *args_for(path, run_id, tmp_path), "--db", url)
    assert result.stderr.splitlines()[0] == f"store: {url}", result.output
    assert sum(line.startswith("store: ") for line in result.output.splitlines()) == 1
    assert "store: " not in result.stdout


@pytest.mark.parametrize("path", sorted(with_option("--json") & set(ARGS)), ids=" ".join)
def test_every_json_output_carries_the_store(
    path: tuple[str, ...], recorded: tuple[str, str], tmp_path: Path
) -> None:
    """``--json``: stdout is one JSON object with a ``store`` field; stderr names no store."""
    url, run_id = recorded
    result = invoke(*path, *args_for(path, run_id, tmp_path), "--db", url, "--json")
    assert json.loads(result.stdout)["store"] == url, result.output
    assert "store: " not in result.stderr


def test_idempotency_list_json_counts_its_claims(recorded: tuple[str, str]) -> None:
    """``idempotency list --json`` has ``count``, like ``approvals list --json``."""
    url, _ = recorded
    body = json.loads(invoke("idempotency", "list", "--db", url, "--json").stdout)
    assert body == {"store": url, "count": 0, "claims": []}


@pytest.mark.parametrize("path", sorted(set(ARGS) - CREATES), ids=" ".join)
def test_no_operator_command_creates_a_missing_store(path: tuple[str, ...], tmp_path: Path) -> None:
    """A path with no store: exit 1 (2 for ``drift``), one line ``no corral store at PATH``,
    nothing created."""
    missing = tmp_path / "no" / "such" / "corral.db"
    result = invoke(*path, *args_for(path, "run_x", tmp_path), "--db", f"sqlite:///{missing}")
    assert result.exit_code == failed(path), result.output
    assert result.stderr.startswith(f"corral {' '.join(path)}: no corral store at {missing}; ")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("path", sorted(ARGS), ids=" ".join)
def test_a_url_naming_no_store_is_a_usage_error_for_every_command(
    path: tuple[str, ...], tmp_path: Path
) -> None:
    """Exit 2 and one line saying what the URL probably meant, whatever the command."""
    result = invoke(*path, *args_for(path, "run_x", tmp_path), "--db", "sqlite:/corral.db")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"corral {path[0]}")
    assert "did you mean sqlite:///corral.db" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("path", sorted(ARGS), ids=" ".join)
def test_a_store_that_cannot_be_reached_is_a_failure_for_every_command(
    path: tuple[str, ...], tmp_path: Path
) -> None:
    """Exit 1 (2 for ``drift``) and one line naming the store, never a traceback, whatever
    the command."""
    url = "postgresql://nobody@127.0.0.1:1/corral?connect_timeout=1"
    result = invoke(*path, *args_for(path, "run_x", tmp_path), "--db", url)
    assert result.exit_code == failed(path), result.output
    assert "postgresql://nobody@127.0.0.1:1/corral" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("path", sorted(commands()), ids=" ".join)
def test_an_unknown_option_is_a_usage_error_for_every_command(path: tuple[str, ...]) -> None:
    """Typer's own usage errors exit 2 as well."""
    assert invoke(*path, "--no-such-option").exit_code == 2


def test_an_empty_file_or_another_applications_database_is_no_store(tmp_path: Path) -> None:
    """An empty file (an older version's leftover) and a foreign SQLite database are refused
    as no store, and left as they were."""
    empty = tmp_path / "empty.db"
    empty.touch()
    result = invoke("runs", "--db", f"sqlite:///{empty}")
    assert result.exit_code == 1
    assert f"no corral store at {empty} (the file is empty)" in result.stderr
    assert empty.stat().st_size == 0
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    result = invoke("kill", "enable", "--db", f"sqlite:///{foreign}")
    assert result.exit_code == 1
    assert f"no corral store at {foreign} (the file has no corral tables)" in result.stderr
    with sqlite3.connect(foreign) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert tables == ["orders"]


@pytest.mark.parametrize(
    ("url", "meant"),
    [
        ("sqlite:/corral.db", "did you mean sqlite:///corral.db (relative: ./corral.db) or "
         "sqlite:////corral.db (absolute: /corral.db)?"),
        ("sqlite:corral.db", "did you mean sqlite:///corral.db (relative: ./corral.db)"),
        ("sqlite://corral.db", "did you mean sqlite:///corral.db (relative: ./corral.db)"),
        ("corral.db", "has no scheme: did you mean sqlite:///corral.db?"),
        ("/var/lib/corral.db", "has no scheme: did you mean sqlite:////var/lib/corral.db?"),
        ("sqlite3:///corral.db", "scheme 'sqlite3': did you mean sqlite:///corral.db?"),
        ("file:///tmp/corral.db", "scheme 'file': did you mean sqlite:////tmp/corral.db?"),
        ("postgres:/db.example/corral", "did you mean postgresql://db.example/corral?"),
        ("postgresql+psycopg://db.example/corral", "did you mean postgresql://db.example/corral?"),
        ("memory:", "did you mean memory://?"),
    ],
)  # fmt: skip
def test_a_near_miss_url_says_what_it_probably_meant(url: str, meant: str) -> None:
    """A common typo in a store URL is a usage error (exit 2) naming the URL it meant."""
    result = invoke("runs", "--db", url)
    assert result.exit_code == 2
    assert result.stderr.startswith("corral runs: --db: ")
    assert meant in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_password_in_a_store_url_is_never_shown() -> None:
    """Store lines, errors and suggestions hide the password of a URL."""
    down = invoke("runs", "--db", "postgresql://app:s3cret@127.0.0.1:1/corral?connect_timeout=1")
    assert down.exit_code == 1
    assert "app:***@127.0.0.1:1" in down.stderr and "s3cret" not in down.output
    typo = invoke("kill", "status", "--db", "postgresql+psycopg://app:s3cret@db.example/corral")
    assert typo.exit_code == 2
    assert "did you mean postgresql://app:***@db.example/corral?" in typo.stderr
    assert "s3cret" not in typo.output


# -- the default store, in fresh processes with their own home directory -------------------------


def home_env(home: Path) -> dict[str, str]:
    """The environment of a user whose home is ``home``: no CORRAL_DB, no XDG_DATA_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_DB", "XDG_DATA_HOME")}
    env["HOME"] = str(home)
    return env


def corral_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


AGENT = textwrap.dedent(
    """
    import sys, time
    import corral

    @corral.tool(name="kb.read", effect="read")
    def kb(q: str) -> str:
        return "x"

    policy = corral.Policy.from_dict({
        "tools": {"allow": ["kb.read"]},
        "budgets": {"max_tool_calls": 1000, "max_seconds": 60},
    })
    with corral.Run(policy, tools=[kb], tenant="acme", agent="script") as run:  # no store named
        print("ready", flush=True)
        for n in range(int(sys.argv[1])):
            run.call("kb.read", {"q": str(n)})
            time.sleep(0.05)
        run.finish("done")
    print(run.result.stop_reason, flush=True)
    """
)


def test_a_script_and_a_shell_share_the_per_user_store_from_any_directory(tmp_path: Path) -> None:
    """With no store named, a script in one directory and ``corral runs`` in another use the
    same file in the user's data directory; nothing is written to either directory, and a
    command run before any store exists creates none."""
    home, here, there = tmp_path / "home", tmp_path / "here", tmp_path / "there"
    for d in (home, here, there):
        d.mkdir()
    env = home_env(home)
    store = home / ".local" / "share" / "corral" / "corral.db"
    before = corral_cli("runs", env=env, cwd=there)
    assert before.returncode == 1
    assert before.stderr.startswith(f"corral runs: no corral store at {store}; ")
    assert "corral init creates it" in before.stderr
    assert not (home / ".local").exists()
    script = subprocess.run(
        [sys.executable, "-c", AGENT, "1"], capture_output=True, text=True, env=env, cwd=here
    )
    assert script.stdout.split() == ["ready", "ok"], script.stderr
    listed = corral_cli("runs", "--json", env=env, cwd=there)
    assert listed.returncode == 0, listed.stderr
    body = json.loads(listed.stdout)
    assert body["store"] == f"sqlite:///{store}"
    assert [(r["tenant"], r["agent"]) for r in body["runs"]] == [("acme", "script")]
    assert list(here.iterdir()) == [] and list(there.iterdir()) == []


def test_kill_from_another_directory_reaches_a_running_script(tmp_path: Path) -> None:
    """``corral kill enable`` in another directory reaches the script through the per-user
    store, says it reached one running run, and the script stops with kill_switch."""
    home, here, there = tmp_path / "home", tmp_path / "here", tmp_path / "there"
    for d in (home, here, there):
        d.mkdir()
    env = home_env(home)
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, "400"], stdout=subprocess.PIPE, text=True, env=env, cwd=here
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == "ready"
        killed = corral_cli("kill", "enable", "--mode", "stop_all", "--json", env=env, cwd=there)
        assert killed.returncode == 0, killed.stderr
        reach = json.loads(killed.stdout)["reach"]
        assert reach["runs"] == 1
        (group,) = reach["groups"]
        assert (group["tenant"], group["agent"], group["mode"]) == ("acme", "script", "stop_all")
        assert agent.stdout.readline().strip() == "kill_switch"
    finally:
        agent.kill()
        agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()


def test_init_creates_the_default_store_once_and_says_where(tmp_path: Path) -> None:
    """``corral init`` makes the per-user store (and its folder); run again it creates
    nothing and says so; both exit 0."""
    home = tmp_path / "home"
    home.mkdir()
    env = home_env(home)
    store = home / ".local" / "share" / "corral" / "corral.db"
    first = corral_cli("init", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == f"store: sqlite:///{store}\n"
    assert first.stdout.startswith("created a corral store (schema version ")
    assert store.is_file()
    again = corral_cli("init", "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert body["store"] == f"sqlite:///{store}" and body["created"] is False
    assert isinstance(body["schema_version"], int) and body["schema_version"] >= 1


def test_init_creates_the_folders_of_a_named_file(tmp_path: Path) -> None:
    """``corral init --db`` makes the missing folders of the file it names, then the store."""
    path = tmp_path / "a" / "b" / "corral.db"
    result = invoke("init", "--db", f"sqlite:///{path}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["created"] is True and path.is_file()
    assert invoke("runs", "--db", f"sqlite:///{path}").exit_code == 0


def test_init_refuses_another_applications_database(tmp_path: Path) -> None:
    """``corral init`` never adds its tables to a SQLite file that holds other tables."""
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    result = invoke("init", "--db", f"sqlite:///{foreign}")
    assert result.exit_code == 1
    assert "is a SQLite database without corral's tables" in result.stderr


def test_init_of_an_empty_file_makes_it_a_store(tmp_path: Path) -> None:
    """An empty file (left by an older version) becomes a store with ``init``."""
    empty = tmp_path / "left.db"
    empty.touch()
    result = invoke("init", "--db", f"sqlite:///{empty}")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("created a corral store")
    assert invoke("kill", "status", "--db", f"sqlite:///{empty}").exit_code == 0


def test_postgres_without_corral_tables_is_no_store_until_init() -> None:
    """A PostgreSQL schema without corral's tables is refused (and left without them) by the
    operator commands; ``corral init`` creates them."""
    from crash import pg

    helpers = pg()
    server = helpers.require_postgres()
    schema = helpers.new_schema()
    url = f"{server}?schema={schema}"
    try:
        missing = invoke("approvals", "list", "--db", url)
        assert missing.exit_code == 1, missing.output
        assert f"no corral store at {url} (schema '{schema}' has no corral tables)" in (
            missing.stderr
        )
        created = invoke("init", "--db", url, "--json")
        assert created.exit_code == 0, created.output
        body = json.loads(created.stdout)
        assert body["created"] is True and body["schema_version"] >= 1
        assert invoke("approvals", "list", "--db", url).exit_code == 0
    finally:
        open_store(url).close()
        helpers.drop_schema(server, schema)


# -- the version -----------------------------------------------------------------------------


def test_the_version_is_printed_by_an_option_and_a_command() -> None:
    """``corral --version`` and ``corral version`` print ``corral X.Y.Z`` and exit 0."""
    assert corral.__version__
    done = subprocess.run(
        [sys.executable, "-m", "corral", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, f"corral {corral.__version__}\n")
    command = invoke("version")
    assert (command.exit_code, command.stdout) == (0, f"corral {corral.__version__}\n")
