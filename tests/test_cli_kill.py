"""``corral kill enable | disable | status``: a round trip through the real command, the
``--json`` shape, who and why recorded, and one-line errors with exit 2."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import corral
from corral.cli.app import app
from corral.exceptions import StoreError
from corral.stores.base import RunRecord
from corral.stores.sqlite import SQLiteStore

FIELDS = ["scope", "target", "mode", "reason", "by", "since"]


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m corral ARGS`` in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], capture_output=True, text=True, timeout=60
    )


def invoke(*args: str) -> Any:
    """The command in this process (for the quick error cases)."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The URL of a new SQLite store in a temporary directory (`corral kill` never creates
    one)."""
    SQLiteStore(tmp_path / "corral.db").close()
    return f"sqlite:///{tmp_path / 'corral.db'}"


def outcome(db: str, probe: Callable[..., Any], **who: Any) -> dict[str, str]:
    """Stop reasons of a read and a write, each in its own run on ``db``."""
    read, write = probe("kb.read"), probe("kb.write", effect="write")
    policy = corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read", "kb.write"]}, "writes": {"require_approval": False}}
    )
    store = SQLiteStore(db.removeprefix("sqlite:///"))
    seen = {}
    try:
        for name in ("kb.read", "kb.write"):
            with corral.Run(policy, tools=[read.tool, write.tool], store=store, **who) as run:
                run.call(name, {"q": "x"})
            seen[name] = run.result.stop_reason
    finally:
        store.close()
    return seen


def test_enable_status_disable_round_trip(
    db: str, probe: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switches set by the command stop runs on the same store, show in status, and lift."""
    on = corral_cli(
        "kill", "enable", "--mode", "stop_all", "--tenant", "acme",
        "--reason", "incident 7", "--by", "alice", "--db", db,
    )  # fmt: skip
    assert on.returncode == 0, on.stderr
    assert on.stdout.splitlines()[0] == "kill switch on: tenant/acme, stop_all (by alice)"
    assert on.stderr == f"store: {db}\n"
    monkeypatch.setenv("USER", "bob")
    assert invoke("kill", "enable", "--reason", "writes off", "--db", db).exit_code == 0

    status = corral_cli("kill", "status", "--db", db, "--json")
    assert status.returncode == 0, status.stderr
    switches = json.loads(status.stdout)["switches"]
    assert [list(s) for s in switches] == [FIELDS, FIELDS]
    by_scope = {s["scope"]: s for s in switches}
    assert by_scope["tenant"] == {
        **by_scope["tenant"],
        "target": "acme",
        "mode": "stop_all",
        "reason": "incident 7",
        "by": "alice",
    }
    assert by_scope["global"]["mode"] is None
    assert by_scope["global"]["by"] == f"bob@{socket.gethostname()}"
    assert all(s["since"].endswith("Z") for s in switches)

    table = invoke("kill", "status", "--db", db).stdout.splitlines()
    assert table[0].split() == ["SCOPE", "TARGET", "MODE", "REASON", "BY", "SINCE"]
    assert any("(run's default)" in line and "writes off" in line for line in table)
    assert any("stop_all" in line and "acme" in line for line in table)

    assert outcome(db, probe, tenant="acme") == {
        "kb.read": "kill_switch",
        "kb.write": "kill_switch",
    }
    assert outcome(db, probe, tenant="globex") == {"kb.read": "ok", "kb.write": "kill_switch"}

    off = corral_cli("kill", "disable", "--tenant", "acme", "--db", db)
    assert (off.returncode, off.stdout.strip()) == (
        0,
        f"kill switch off: tenant/acme (by bob@{socket.gethostname()})",
    )
    assert invoke("kill", "disable", "--db", db).exit_code == 0
    assert json.loads(invoke("kill", "status", "--db", db, "--json").stdout)["switches"] == []
    assert outcome(db, probe, tenant="acme") == {"kb.read": "ok", "kb.write": "ok"}


def test_disabling_a_switch_that_is_not_on_says_so_and_exits_1(db: str) -> None:
    """``disable`` at a scope with no switch exits 1 and lists the switches that are on."""
    assert invoke("kill", "enable", "--tool", "browser.open", "--db", db).exit_code == 0
    result = invoke("kill", "disable", "--tool", "browser.opn", "--db", db)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"store: {db}",
        "corral kill disable: no kill switch is on at tool/browser.opn (on: tool/browser.open)",
    ]


def test_a_tool_switch_without_a_mode_warns_what_it_may_leave_running(db: str) -> None:
    """A mode-less tool switch is set, with a note that a read tool may keep running."""
    result = invoke("kill", "enable", "--tool", "browser.open", "--db", db)
    assert result.exit_code == 0
    assert (
        "corral kill enable --tool browser.open --mode stop_all turns it off everywhere"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tenant", "acme", "--tool", "browser.open"], "give at most one of --tenant, --agent"),
        (["--agent", "a", "--run", "r", "--tenant", "t"], "(got --tenant and --agent and --run)"),
        (["--mode", "disable_all"], "unknown kill-switch mode 'disable_all'"),
        (["--tool", "Browser.Open"], "'Browser.Open' is not a tool name"),
        (["--tenant", " "], "--tenant needs a value"),
        (["--by", ""], "--as needs a value"),
        (["--as", " "], "--as needs a value"),
    ],
)
def test_bad_combinations_are_one_line_and_exit_2(db: str, args: list[str], message: str) -> None:
    """A usage error prints one line naming the problem, exits 2, and changes nothing."""
    result = invoke("kill", "enable", *args, "--db", db)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert json.loads(invoke("kill", "status", "--db", db, "--json").stdout)["switches"] == []


def test_errors_from_the_real_command_carry_no_traceback() -> None:
    """Through ``python -m corral``: two scopes exit 2 with one line and no traceback."""
    two = corral_cli("kill", "disable", "--tenant", "a", "--agent", "b", "--db", "memory://")
    assert two.returncode == 2
    assert two.stderr.startswith("corral kill disable: give at most one of")
    assert len(two.stderr.strip().splitlines()) == 1


def test_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A store that cannot be opened: exit 1 and a line saying so, never a traceback."""
    (tmp_path / "text.db").write_text("not a database")
    down = invoke("kill", "status", "--db", f"sqlite:///{tmp_path / 'text.db'}")
    assert down.exit_code == 1
    assert down.stderr.startswith("corral kill status: --db: cannot open the store")
    assert "Traceback" not in down.output


@pytest.mark.parametrize("verb", [["enable", "--mode", "stop_all"], ["disable"], ["status"]])
def test_a_store_that_does_not_exist_is_not_created(tmp_path: Path, verb: list[str]) -> None:
    """`corral kill` on a path with no store says so, exits 1 and creates nothing there:
    an agent could not be using a store that did not exist."""
    path = tmp_path / "no" / "such" / "x.db"
    down = invoke("kill", *verb, "--db", f"sqlite:///{path}")
    assert down.exit_code == 1
    assert down.stderr.startswith(f"corral kill {verb[0]}: no corral store at {path}; ")
    assert len(down.stderr.splitlines()) == 1
    assert not path.parent.exists()


def test_status_of_an_empty_store_says_so(db: str) -> None:
    """With no switch on, status says so (and ``--json`` gives an empty list)."""
    result = invoke("kill", "status", "--db", db)
    assert (result.exit_code, result.stdout.strip()) == (0, "no kill switch is on")


def test_the_default_store_is_corral_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--db`` the command uses ``CORRAL_DB``, the store runs use by default."""
    SQLiteStore(tmp_path / "default.db").close()
    url = f"sqlite:///{tmp_path / 'default.db'}"
    monkeypatch.setenv("CORRAL_DB", url)
    assert invoke("kill", "enable", "--agent", "bot", "--mode", "stop_all").exit_code == 0
    switches = json.loads(invoke("kill", "status", "--json", "--db", url).stdout)["switches"]
    assert [(s["scope"], s["target"]) for s in switches] == [("agent", "bot")]


def kill_records(db: str) -> list[dict[str, Any]]:
    """The audit log's ``kill_switch`` records, as ``corral audit export`` writes them."""
    out = invoke("audit", "export", "--db", db)
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return [r for r in rows if r["kind"] == "kill_switch"]


def test_every_change_is_audited_with_who_why_and_what(db: str) -> None:
    """Enable and disable each append one audit record: actor, reason, scope, target, mode."""
    on = invoke(
        "kill", "enable", "--mode", "stop_all", "--tenant", "acme",
        "--reason", "incident 7", "--as", "alice", "--db", db,
    )  # fmt: skip
    assert on.exit_code == 0, on.output
    off = invoke(
        "kill", "disable", "--tenant", "acme", "--reason", "resolved", "--as", "carol", "--db", db
    )
    assert (off.exit_code, off.stdout.strip()) == (0, "kill switch off: tenant/acme (by carol)")
    records = kill_records(db)
    assert [(r["run_id"], r["actor"], r["tenant"], r["data"]) for r in records] == [
        ("-", "alice", "acme", {"action": "enable", "scope": "tenant", "target": "acme",
                                "mode": "stop_all", "reason": "incident 7"}),
        ("-", "carol", "acme", {"action": "disable", "scope": "tenant", "target": "acme",
                                "mode": None, "reason": "resolved"}),
    ]  # fmt: skip
    verify = corral_cli("audit", "verify", "--db", db)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    runs = json.loads(invoke("runs", "--db", db, "--json").stdout)["runs"]
    assert runs == []


def test_a_disable_that_finds_nothing_records_nothing(db: str) -> None:
    """``disable`` where no switch is on exits 1 with a clear line and writes no record."""
    result = invoke("kill", "disable", "--agent", "bot", "--reason", "x", "--db", db)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "corral kill disable: no kill switch is on at agent/bot (none is on)"
    )
    assert kill_records(db) == []


def test_status_shows_when_each_switch_was_set(db: str) -> None:
    """``status`` prints the time a switch was set, in the table and in ``--json``."""
    before = datetime.now(UTC).replace(microsecond=0)
    assert invoke("kill", "enable", "--run", "r-1", "--mode", "stop_all", "--db", db).exit_code == 0
    (row,) = json.loads(invoke("kill", "status", "--json", "--db", db).stdout)["switches"]
    since = datetime.strptime(row["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= since <= datetime.now(UTC)
    table = invoke("kill", "status", "--db", db).stdout
    assert row["since"] in table


# -- what a switch reaches -----------------------------------------------------------------------


def policy_with(mode: str) -> corral.Policy:
    return corral.Policy.from_dict(
        {"tools": {"allow": ["kb.read"]}, "kill_switch": {"mode_when_enabled": mode}}
    )


def test_enable_reports_the_running_runs_it_reaches_by_tenant_and_agent(db: str) -> None:
    """Without --mode each running run applies its policy's mode, grouped by tenant and agent,
    with a note on how to stop everything; a finished run is not counted; with --tenant and
    --mode only that tenant's runs, under the switch's mode."""
    with corral.Run(policy_with("disable_writes"), store=db, tenant="acme", agent="x") as done:
        done.finish("over")
    with contextlib.ExitStack() as stack:
        for tenant, agent, mode in [
            ("acme", "bot1", "disable_writes"),
            ("acme", "bot1", "disable_writes"),
            ("globex", "bot2", "stop_all"),
        ]:
            stack.enter_context(corral.Run(policy_with(mode), store=db, tenant=tenant, agent=agent))
        body = json.loads(invoke("kill", "enable", "--json", "--db", db).stdout)
        assert body["reach"]["runs"] == 3 and body["reach"]["scanned_all"] is True
        groups = [
            (g["tenant"], g["agent"], g["runs"], g["mode"], g["mode_source"])
            for g in body["reach"]["groups"]
        ]
        assert groups == [
            ("acme", "bot1", 2, "disable_writes", "policy"),
            ("globex", "bot2", 1, "stop_all", "policy"),
        ]
        assert body["switch"]["mode"] is None
        assert "to stop everything: corral kill enable --mode stop_all" in body["note"]
        text = invoke("kill", "enable", "--db", db).stdout.splitlines()
        assert text[0].startswith(
            "kill switch on: global, each run's kill_switch.mode_when_enabled"
        )
        assert text[1] == "it reaches 3 running runs in this store:"
        assert text[2].split() == ["acme", "/", "bot1", "2", "runs", "disable_writes", "(its",
                                   "policy):", "writes", "refused;", "reads", "and", "model",
                                   "calls", "go", "on"]  # fmt: skip
        assert text[3].startswith("  globex / bot2  1 run   stop_all (its policy): ")
        assert text[4].startswith("note: without --mode, each run applies its policy's")
        tenant = json.loads(
            invoke(
                "kill", "enable", "--tenant", "acme", "--mode", "stop_all", "--json", "--db", db
            ).stdout
        )
        assert [(g["tenant"], g["runs"], g["mode"], g["mode_source"]) for g in
                tenant["reach"]["groups"]] == [("acme", 2, "stop_all", "switch")]  # fmt: skip
        assert tenant["note"] is None
        assert invoke("kill", "disable", "--db", db).exit_code == 0
        assert invoke("kill", "disable", "--tenant", "acme", "--db", db).exit_code == 0


def test_enable_reaching_no_running_run_says_an_agent_may_use_another_store(db: str) -> None:
    """With no run going in the store, enable still sets the switch and says where a running
    agent's store comes from."""
    result = invoke("kill", "enable", "--mode", "stop_all", "--db", db)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1] == (
        "it reaches no running run in this store now; runs that start or call later obey it. "
        "If an agent is running, it uses another store (check its CORRAL_DB or store=)"
    )


def test_a_run_that_recorded_no_mode_shows_as_unknown(db: str) -> None:
    """A running run recorded without its kill mode (by an older corral) is counted, its mode
    unknown and said so."""
    store = SQLiteStore(db.removeprefix("sqlite:///"))
    try:
        store.create_run(RunRecord(id="run_old", tenant="acme", agent="old", started_at=1.0))
    finally:
        store.close()
    body = json.loads(invoke("kill", "enable", "--json", "--db", db).stdout)
    (group,) = body["reach"]["groups"]
    assert (group["agent"], group["mode"], group["mode_source"]) == ("old", None, "unknown")
    text = invoke("kill", "enable", "--db", db).stdout
    assert "not recorded: the run started on an older corral" in text


def test_a_run_whose_process_died_is_not_reached(db: str) -> None:
    """A run left running by a process that died is not counted as reached."""
    crash = subprocess.run(
        [sys.executable, "-c", DIES, db], capture_output=True, text=True, timeout=60
    )
    assert crash.returncode == 9, crash.stderr
    done = corral_cli("kill", "enable", "--json", "--db", db)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reach"] == {"runs": 0, "scanned_all": True, "groups": []}


DIES = """
import os, sys
import corral
run = corral.Run(corral.Policy.from_dict({}), store=sys.argv[1], tenant="acme", agent="gone")
run.__enter__()
os._exit(9)
"""


def test_a_switch_whose_reach_cannot_be_read_is_still_reported_on(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When listing the running runs fails after the switch was set, enable still exits 0,
    saying the switch is on and why its reach is unknown."""

    def fail(self: SQLiteStore, **kwargs: Any) -> list[Any]:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(SQLiteStore, "list_runs", fail)
    result = invoke("kill", "enable", "--mode", "stop_all", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["reach"] is None and body["switch"]["mode"] == "stop_all"
    assert (
        body["note"] == "the switch is on, but the running runs could not be read: disk I/O error"
    )
    text = invoke("kill", "enable", "--mode", "stop_all", "--db", db).stdout
    assert "could not be read: disk I/O error" in text
    monkeypatch.undo()
    switches = json.loads(invoke("kill", "status", "--json", "--db", db).stdout)["switches"]
    assert [s["mode"] for s in switches] == ["stop_all"]
