"""Reading golden files (a suite, a script, a baseline): bounded YAML or JSON, validated,
each problem one ``FILE:LINE: path: message`` line of a :class:`~corral.SuiteError`.

The text is read and parsed under the policy's bounds (size, nesting, aliases, a key given
twice), then validated by the file's pydantic model; the line is where the file holds the
value a problem names (or the nearest enclosing one).

>>> import tempfile, os
>>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
>>> _ = f.write("suite: s\\ntasks:\\n  - id: a\\n    task: hi\\n")
>>> _ = f.write("    expect: {tool_calls: {max: x}}\\n")
>>> f.close()
>>> try:
...     load_suite(f.name)
... except SuiteError as exc:
...     print(exc.problems[0].split(": ", 1)[1])
tasks[0].expect.tool_calls.max: must be a number, zero or more, got 'x'
>>> os.unlink(f.name)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from corral._safe import error_text
from corral.exceptions import PolicyError, SuiteError
from corral.golden.suite import ScriptFile, Suite, Task
from corral.policy._input import read_text
from corral.policy.messages import format_validation_error
from corral.policy.schema import Policy, load_policy

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, kw_only=True)
class Document:
    """A file's parsed value and the line of each value in it, by its path
    (``tasks[0].expect``, as problems name it)."""

    source: str
    data: Any
    lines: Mapping[str, int]

    def line_of(self, path: str) -> int | None:
        """The line of the value at ``path``, or of the nearest value holding it."""
        best = ""
        for key in self.lines:
            if len(key) > len(best) and path.startswith(key) and path[len(key) :][:1] in ":.[ ":
                best = key
        return self.lines.get(best or "(top level)")

    def problem(self, line: str) -> str:
        """``line`` (``path: message``) prefixed with the file and the line it names."""
        at = self.line_of(line)
        return f"{self.source}:{at}: {line}" if at else f"{self.source}: {line}"

    def fail(self, lines: list[str]) -> SuiteError:
        return SuiteError([self.problem(x) for x in lines], source=self.source)


def read_document(path: str | Path) -> Document:
    """Parse the file at ``path`` (YAML; JSON is YAML too) under the policy's bounds."""
    from corral.policy._yaml import parse_yaml  # PyYAML loaded on first use

    source = str(path)
    try:
        text = read_text(Path(path))
        data = parse_yaml(text, source)
    except PolicyError as exc:
        raise SuiteError([_no_file(p, source) for p in exc.problems], source=source) from None
    if data is None:
        raise SuiteError([f"{source}: the file holds no document"], source=source)
    return Document(source=source, data=data, lines=_lines(text))


def _no_file(problem: str, source: str) -> str:
    """A reader's ``(file): ...`` problem as ``FILE: ...``, its line moved up front."""
    body = problem.removeprefix("(file): ")
    if body.startswith("line "):
        number, _, rest = body[5:].partition(", ")
        return f"{source}:{number}: {rest}"
    return f"{source}: {body}"


def _lines(text: str) -> dict[str, int]:
    """The line (from 1) of every value in ``text``, by its path; the text was parsed once
    already under bounds, so composing it again is safe."""
    import yaml

    from corral.policy._yaml import StrictLoader

    loader = StrictLoader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    found: dict[str, int] = {}
    todo: list[tuple[Any, str, int]] = [(root, "", 0)]
    while todo and len(found) < 100_000:
        node, path, depth = todo.pop()
        if node is None or depth > 64:
            continue
        found.setdefault(path or "(top level)", node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                name = name if name.isprintable() else repr(name)
                inner = f"{path}.{name}" if path else name
                found.setdefault(inner, key.start_mark.line + 1)
                todo.append((value, inner, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                todo.append((item, f"{path}[{i}]", depth + 1))
    return found


def validate(model: type[M], doc: Document) -> M:
    """``doc``'s value as ``model``, or a :class:`SuiteError` with a line per problem."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        raise doc.fail(format_validation_error(exc, doc.data, model=model)) from None
    except RecursionError:
        raise doc.fail(["(top level): nested too deeply to validate"]) from None


# -- a suite -------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LoadedSuite:
    """A validated suite, where it came from, and the policy each task runs under."""

    suite: Suite
    source: str
    policies: Mapping[str, Policy]


def load_suite(path: str | Path) -> LoadedSuite:
    """Read, validate and resolve the suite at ``path``: its tasks' ids unique, the tools
    they name defined, each policy loaded (a path is read relative to the suite's folder).
    Raises :class:`~corral.SuiteError` listing every problem."""
    doc = read_document(path)
    suite = validate(Suite, doc)
    problems: list[str] = []
    seen: set[str] = set()
    for i, task in enumerate(suite.tasks):
        if task.id in seen:
            problems.append(f"tasks[{i}].id: {task.id!r} names two tasks")
        seen.add(task.id)
        unknown = sorted(set(task.tools or ()) - set(suite.tools))
        if unknown:
            problems.append(f"tasks[{i}].tools: no tool fixture named {', '.join(unknown)}")
    if problems:
        raise doc.fail(problems)
    base = Path(path).parent
    default = _policy(suite.policy, "policy", base, doc, None)
    policies: dict[str, Policy] = {}
    for i, task in enumerate(suite.tasks):
        fallback = default or _permissive(suite, task)
        policies[task.id] = _policy(task.policy, f"tasks[{i}].policy", base, doc, fallback)
    return LoadedSuite(suite=suite, source=str(path), policies=policies)


def _permissive(suite: Suite, task: Task) -> Policy:
    """The policy of a suite that names none: the task's tools allowed, writes without
    approval, the default budgets."""
    names = sorted(suite.task_tools(task))
    return Policy.from_dict({"tools": {"allow": names}, "writes": {"require_approval": False}})


def _policy(ref: Any, where: str, base: Path, doc: Document, fallback: Any) -> Any:
    if ref is None:
        return fallback
    try:
        if isinstance(ref, str):
            return load_policy(base / ref)
        return Policy.from_dict(ref, source=f"{doc.source} ({where})")
    except PolicyError as exc:
        raise doc.fail([f"{where}: {p}" for p in exc.problems]) from None
    except Exception as exc:  # a policy that cannot be read: still one line
        raise doc.fail([f"{where}: {error_text(exc)}"]) from None


def load_script(path: str | Path) -> ScriptFile:
    """Read and validate a ``scripted:PATH`` file."""
    return validate(ScriptFile, read_document(path))
