"""A golden suite's schema: tasks, their tool fixtures, scripted turns, expectations and the
drift thresholds (docs/golden.md describes every field).

Validated with pydantic like a policy: unknown keys are errors, numbers are never read from
text, and :mod:`corral.golden.load` turns each problem into one ``FILE:LINE: path: message``
line. Imports the policy's field types; nothing of the loop.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from corral.golden import jsonpath
from corral.policy.fields import (
    USD,
    Effect,
    JSONSchema,
    NonNegativeInt,
    Ratio,
    ToolName,
)
from corral.policy.sections import Section
from corral.stops import StopReason

_TASK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}\Z")
Text = Annotated[str, Field(strict=True)]
NonNegativeNumber = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


def _task_id(value: str) -> str:
    if not _TASK_ID.match(value):
        raise ValueError(f"a task id uses letters, digits, '_', '.' and '-', got {value!r}")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    return value


def _json_path(value: str) -> str:
    jsonpath.parse(value)  # a ValueError saying where the path stops making sense
    return value


TaskId = Annotated[str, Field(strict=True), AfterValidator(_task_id)]
JsonPath = Annotated[str, Field(strict=True), AfterValidator(_json_path)]
Regex = Annotated[str, Field(strict=True), AfterValidator(_regex)]


def _one_of(section: Section, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if n in section.model_fields_set]
    if len(given) != 1:
        listed = ", ".join(names)
        raise ValueError(f"{what} takes exactly one of {listed}, got {given or 'none'}")


# -- tool fixtures -------------------------------------------------------------------------
class Answer(Section):
    """What a fixture tool does for one call: return ``returns`` or fail with ``error``;
    ``when`` (in ``responses`` only) names arguments the call must have, with these values."""

    when: dict[str, Any] | None = None
    returns: Any = None
    error: Text | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Answer:
        _one_of(self, ("returns", "error"), "an answer")
        return self


class ToolFixture(Section):
    """A tool the agent may call, declared as ``corral.tool`` declares one, and what it
    answers: by arguments (``responses``, first match wins) or call by call (``sequence``,
    its last answer repeating)."""

    effect: Effect = "read"
    description: Text = ""
    cost_usd: USD = Decimal(0)
    args_schema: JSONSchema | None = None
    responses: list[Answer] = Field(default_factory=list)
    sequence: list[Answer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _answers(self) -> ToolFixture:
        if bool(self.responses) == bool(self.sequence):
            raise ValueError("a tool fixture takes responses or a sequence (one, not empty)")
        if any(a.when is not None for a in self.sequence):
            raise ValueError("a sequence answers call by call: its answers take no 'when'")
        return self


# -- the scripted model's turns ------------------------------------------------------------
class ScriptCall(Section):
    name: Text
    args: dict[str, Any] | Text = Field(default_factory=dict)


class ScriptTurn(Section):
    """One turn of the scripted model: an ``answer``, a ``call`` (with ``args``) or several
    ``calls``, or an ``error`` (the endpoint fails); token counts estimated when left out."""

    answer: Text | None = None
    call: Text | None = None
    args: dict[str, Any] | Text | None = None
    calls: list[ScriptCall] | None = None
    error: Text | None = None
    input_tokens: NonNegativeInt | None = None
    output_tokens: NonNegativeInt | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ScriptTurn:
        _one_of(self, ("answer", "call", "calls", "error"), "a turn")
        if self.args is not None and self.call is None:
            raise ValueError("args go with call (a turn with several calls gives each its args)")
        return self


Script = list[ScriptTurn]


# -- expectations --------------------------------------------------------------------------
class Bounds(Section):
    min: NonNegativeNumber | None = None
    max: NonNegativeNumber | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class JsonCheck(Section):
    """A value in the answer read as JSON, at ``path`` (``a.b[0].c``: see
    :mod:`corral.golden.jsonpath`): it ``exists`` (the default), ``equals`` a value, or
    (a string) ``contains`` a text."""

    path: JsonPath
    equals: Any = None
    contains: Text | None = None
    exists: bool = True


class AnswerChecks(Section):
    equals: Text | None = None
    contains: list[Text] = Field(default_factory=list)
    not_contains: list[Text] = Field(default_factory=list)
    regex: Regex | None = None
    json_: list[JsonCheck] = Field(default_factory=list, alias="json")

    model_config = Section.model_config | {"populate_by_name": True}


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class Expect(Section):
    stop_reason: Annotated[list[StopReason], BeforeValidator(_listed)] | None = None
    tool_calls: Bounds | None = None
    tokens: Bounds | None = None
    usd: Bounds | None = None
    called: list[ToolName] = Field(default_factory=list)
    not_called: list[ToolName] = Field(default_factory=list)
    answer: AnswerChecks | None = None


# -- thresholds ----------------------------------------------------------------------------
class Tolerance(Section):
    """How far a figure may move from the baseline's range: ``abs`` units or ``rel`` of the
    baseline's largest value, whichever is wider."""

    abs: NonNegativeNumber = 0.0
    rel: NonNegativeNumber = 0.0


class Thresholds(Section):
    tool_calls: Tolerance = Tolerance()
    tokens_per_request: Tolerance = Tolerance(rel=0.10)
    usd: Tolerance = Tolerance(rel=0.10)
    answer_similarity: Ratio = 1.0
    stop_reason: Literal["same", "ignore"] = "same"


# -- tasks and the suite -------------------------------------------------------------------
PolicyRef = Text | dict[str, Any]


class Task(Section):
    id: TaskId
    task: Text
    tools: list[ToolName] | None = None
    policy: PolicyRef | None = None
    instructions: Text | None = None
    approvals: Literal["approve", "deny"] = "deny"
    script: Script | None = None
    expect: Expect = Expect()


class Suite(Section):
    suite: TaskId
    description: Text = ""
    tools: dict[ToolName, ToolFixture] = Field(default_factory=dict)
    policy: PolicyRef | None = None
    thresholds: Thresholds = Thresholds()
    tasks: Annotated[list[Task], Field(min_length=1)]

    def task_tools(self, task: Task) -> dict[str, ToolFixture]:
        """The fixtures ``task`` offers: those it names, else every fixture of the suite."""
        names = task.tools if task.tools is not None else list(self.tools)
        return {n: self.tools[n] for n in names}


class ScriptFile(Section):
    """A ``scripted:PATH`` file: the turns of each task it names (the suite's own script
    plays for the others), and the name the model reports."""

    model: TaskId = "scripted"
    tasks: dict[TaskId, Script]
