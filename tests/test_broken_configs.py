"""Every broken config gets the exact one-line messages, exit code 2 and no traceback.

The corpus is ``tests/configs/broken/``; ``expected.yaml`` there maps each file to
the problem lines, in order. An empty file (or one holding only comments, or only
``null``) is an error, not an empty policy: a policy file that says nothing is far
more often a truncated deploy or a wrong path than a decision, so corral asks for
``{}`` when "allow nothing" is meant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral.cli.check import check_command
from corral.exceptions import PolicyError
from corral.policy.schema import load_policy

BROKEN = Path(__file__).parent / "configs" / "broken"
EXPECTED: dict[str, list[str]] = yaml.safe_load((BROKEN / "expected.yaml").read_text("utf-8"))
CORPUS = sorted(p.name for p in BROKEN.iterdir() if p.name != "expected.yaml")


def test_corpus_and_expectations_match() -> None:
    """Each broken file has expected lines and each expectation has a file."""
    assert sorted(EXPECTED) == CORPUS
    assert len(CORPUS) >= 25
    assert any(name.endswith(".json") for name in CORPUS)


@pytest.mark.parametrize("name", CORPUS)
def test_broken_config_gets_exact_messages(name: str) -> None:
    """Loading the file raises PolicyError with exactly the expected lines."""
    with pytest.raises(PolicyError) as caught:
        load_policy(BROKEN / name)
    assert caught.value.problems == EXPECTED[name]


@pytest.mark.parametrize("name", CORPUS)
def test_check_exits_2_with_one_line_per_problem(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`corral check` prints each problem as its own line and returns 2, no traceback."""
    code = check_command(BROKEN / name, strict=False, tools=None, as_json=False)
    out, err = capsys.readouterr()
    assert code == 2
    lines = out.splitlines()
    for problem in EXPECTED[name]:
        assert problem in lines
    assert len(lines) == 1 + len(EXPECTED[name])  # a heading, then the problems
    assert "Traceback" not in out + err


@pytest.mark.parametrize("name", CORPUS)
def test_check_json_lists_the_problems(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--json reports valid false and the same problem lines."""
    code = check_command(BROKEN / name, strict=True, tools=None, as_json=True)
    body = json.loads(capsys.readouterr().out)
    assert code == 2
    assert body == {
        "valid": False,
        "problems": EXPECTED[name],
        "items": [],
        "tools": [],
        "warnings": [],
    }


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist is a problem line, exit 2."""
    missing = tmp_path / "nope.yaml"
    assert check_command(missing, strict=False, tools=None, as_json=False) == 2
    assert f"(file): no such file: {missing}" in capsys.readouterr().out.splitlines()


def test_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory given as the policy file is a problem line, exit 2."""
    assert check_command(tmp_path, strict=False, tools=None, as_json=False) == 2
    out = capsys.readouterr().out
    assert f"(file): cannot read {tmp_path}: Is a directory" in out.splitlines()


def test_binary_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not UTF-8 text is a problem line, exit 2."""
    file = tmp_path / "policy.yaml"
    file.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert check_command(file, strict=False, tools=None, as_json=False) == 2
    out = capsys.readouterr().out
    assert f"(file): {file} is not UTF-8 text (invalid start byte at byte 0)" in out.splitlines()


@pytest.mark.parametrize(
    "name", ["many_problems.yaml", "invalid_yaml.yaml", "invalid_json.json", "empty.yaml"]
)
def test_module_entry_point_exits_2_without_traceback(name: str) -> None:
    """`python -m corral.cli.check FILE` prints the same lines and exits 2."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "corral.cli.check", str(BROKEN / name)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[1:] == EXPECTED[name]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_module_entry_point_missing_file_exits_2(tmp_path: Path) -> None:
    """A missing file through the module entry point is exit 2, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "corral.cli.check", str(tmp_path / "nope.yaml"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["problems"] == [
        f"(file): no such file: {tmp_path / 'nope.yaml'}"
    ]
    assert proc.stderr == ""
