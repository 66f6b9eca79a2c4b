"""The model a suite runs against, from its spec (``--model SPEC``):

- ``scripted`` — each task's own ``script`` in the suite;
- ``scripted:PATH`` — a script file (YAML or JSON) whose ``tasks`` map task ids to turns;
  the tasks it does not name play the suite's own script;
- ``openai:MODEL`` or ``openai:MODEL@BASE_URL`` — an OpenAI-compatible endpoint
  (:class:`corral.models.openai.OpenAIModel`); the key is ``OPENAI_API_KEY`` at OpenAI's own
  address, else ``CORRAL_GOLDEN_API_KEY`` when set (a key is never sent elsewhere unasked);
- ``python:MODULE:FACTORY`` — ``FACTORY()`` from an importable module, called once per run,
  returning a model (anything with a ``name`` and a ``respond``).

A spec that cannot work raises :class:`~corral.ConfigError` naming what is wrong.

>>> spec = parse_spec("openai:llama3.1@http://127.0.0.1:11434/v1")
>>> spec.kind, spec.label
('openai', 'openai:llama3.1@http://127.0.0.1:11434/v1')
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corral._safe import error_text
from corral.exceptions import ConfigError
from corral.golden.load import load_script
from corral.golden.scripted import GoldenScript
from corral.golden.suite import ScriptFile, Suite, Task
from corral.models.base import Model

KEY_VARIABLE = "CORRAL_GOLDEN_API_KEY"
_KINDS = "scripted, scripted:PATH, openai:MODEL[@BASE_URL] or python:MODULE:FACTORY"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A parsed ``--model``: ``build(suite, task)`` makes a fresh model for one run."""

    kind: str
    label: str
    script: ScriptFile | None = None
    factory: Callable[[], Any] | None = field(default=None, repr=False)
    model_name: str = ""
    base_url: str | None = None

    def problems(self, suite: Suite) -> list[str]:
        """Why this spec cannot run ``suite``: a script file naming tasks the suite lacks (a
        typo), a task with no turns to play. Empty when it can."""
        if self.kind != "scripted":
            return []
        named = set(self.script.tasks) if self.script is not None else set()
        unknown = sorted(named - {t.id for t in suite.tasks})
        found = [f"the script names tasks the suite does not have: {', '.join(unknown)}"]
        bare = [t.id for t in suite.tasks if t.script is None and t.id not in named]
        found.append(f"no script for the tasks {', '.join(bare)}")
        return [line for line, bad in zip(found, (unknown, bare), strict=True) if bad]

    def build(self, suite: Suite, task: Task) -> Model:
        if self.kind == "scripted":
            turns = task.script
            name = "scripted"
            if self.script is not None:
                name = self.script.model
                turns = self.script.tasks.get(task.id, turns)
            return GoldenScript(turns or [], name=name)
        if self.kind == "openai":
            return _openai(self.model_name, self.base_url)
        assert self.factory is not None
        try:
            made = self.factory()
        except Exception as exc:
            raise ConfigError(
                f"--model {self.label}: the factory raised {error_text(exc)}"
            ) from None
        if not isinstance(made, Model):
            raise ConfigError(
                f"--model {self.label}: the factory returned {type(made).__name__}, "
                "not a model (an object with a name and a respond method)"
            )
        return made


def parse_spec(spec: str) -> ModelSpec:
    """The :class:`ModelSpec` ``spec`` names (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "scripted":
        script = load_script(rest) if rest else None
        return ModelSpec(kind="scripted", label=spec, script=script)
    if kind == "openai" and rest:
        name, at, base = rest.partition("@")
        if not name or (at and not base.startswith(("http://", "https://"))):
            raise ConfigError(f"--model {spec!r}: write openai:MODEL or openai:MODEL@BASE_URL")
        _openai(name, base or None)  # a spec that cannot make a model fails now, once
        return ModelSpec(kind="openai", label=spec, model_name=name, base_url=base or None)
    if kind == "python" and rest:
        module, _, attr = rest.rpartition(":")
        if not module or not attr:
            raise ConfigError(f"--model {spec!r}: write python:MODULE:FACTORY")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except Exception as exc:
            raise ConfigError(f"--model {spec!r}: cannot load it ({error_text(exc)})") from None
        if not callable(factory):
            raise ConfigError(f"--model {spec!r}: {attr} is not callable")
        return ModelSpec(kind="python", label=spec, factory=factory)
    raise ConfigError(f"--model {spec!r}: not a model spec (use {_KINDS})")


def _openai(name: str, base_url: str | None) -> Model:
    from corral.models.openai import OPENAI_URL, OpenAIModel

    if base_url is None or base_url.rstrip("/") == OPENAI_URL:
        return OpenAIModel(name)  # OPENAI_API_KEY, or a ConfigError naming it
    return OpenAIModel(name, base_url=base_url, api_key=os.environ.get(KEY_VARIABLE) or "")
