"""The policy: what a run may do, loaded from YAML, JSON or a dict and validated strictly.

>>> p = Policy.from_dict({"tools": {"allow": ["search.read"]}, "budgets": {"max_steps": 5}})
>>> p.budgets.max_steps, p.budgets.max_tool_calls, p.allows("search.read"), p.allows("Search.read")
(5, 15, True, False)

Unknown keys are errors. Every problem is reported once with its path and the bad
value (``budgets.max_steps: must be a positive integer, got -3``), all problems at
once, as a :class:`~corral.exceptions.PolicyError` -- never a traceback.

This module holds :class:`Policy` and its loading; its sections are in
:mod:`corral.policy.sections`, their field types in :mod:`corral.policy.fields` (both
re-exported here). Imports ``corral.exceptions``, ``corral._safe`` and the policy's own
modules.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError
from pydantic_core import to_jsonable_python

from corral._safe import error_text
from corral.exceptions import ConfigError, PolicyError
from corral.policy._input import (
    check_size,
    parse_json,
    plain_tree,
    read_text,
)
from corral.policy.fields import (
    CREDENTIAL_NAME,
    DEPENDENCY_NAME,
    GUARDS,
    TOOL_NAME,
    USD,
    CredentialName,
    DependencyName,
    Effect,
    Guard,
    JSONSchema,
    KillMode,
    Mode,
    NonNegativeInt,
    NonNegativeSeconds,
    Number,
    OnDegraded,
    OnDenied,
    OnLoop,
    PositiveInt,
    PositiveSeconds,
    Ratio,
    ToolName,
    Tracked,
)
from corral.policy.messages import format_validation_error, render_value
from corral.policy.sections import (
    Approvals,
    ArgConstraint,
    Budgets,
    Context,
    Degrade,
    GuardModes,
    KillSwitch,
    Loops,
    ModelPrice,
    Models,
    ModeSetting,
    Monitoring,
    Observations,
    Recording,
    Redact,
    Section,
    ToolSpec,
    ToolsSection,
    WindowLimit,
    Writes,
)

# The names this module held before its sections and field types moved out: every one
# of them is still importable from here.
__all__ = [
    "CREDENTIAL_NAME",
    "DEPENDENCY_NAME",
    "GUARDS",
    "TOOL_NAME",
    "USD",
    "ArgConstraint",
    "Budgets",
    "Context",
    "CredentialName",
    "Degrade",
    "DependencyName",
    "Effect",
    "Guard",
    "GuardModes",
    "JSONSchema",
    "KillMode",
    "KillSwitch",
    "Loops",
    "Mode",
    "ModeSetting",
    "ModelPrice",
    "Models",
    "Monitoring",
    "NonNegativeInt",
    "NonNegativeSeconds",
    "Number",
    "Observations",
    "OnDegraded",
    "OnDenied",
    "OnLoop",
    "Policy",
    "PositiveInt",
    "PositiveSeconds",
    "Ratio",
    "Recording",
    "Redact",
    "ToolName",
    "ToolSpec",
    "ToolsSection",
    "Tracked",
    "WindowLimit",
    "Writes",
    "load_policy",
]


class Policy(Section):
    """A whole policy. Build with :meth:`from_dict`, :meth:`from_yaml` or :func:`load_policy`."""

    version: str | None = None
    mode: ModeSetting = "enforce"
    tools: ToolsSection = Field(default_factory=ToolsSection)
    budgets: Budgets = Field(default_factory=Budgets)
    writes: Writes = Field(default_factory=Writes)
    approvals: Approvals = Field(default_factory=Approvals)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    kill_switch: KillSwitch = Field(default_factory=KillSwitch)
    degrade: Degrade = Field(default_factory=Degrade)
    observations: Observations = Field(default_factory=Observations)
    context: Context = Field(default_factory=Context)
    recording: Recording = Field(default_factory=Recording)
    loops: Loops = Field(default_factory=Loops)
    limits: list[WindowLimit] = Field(default_factory=list)
    models: Models = Field(default_factory=Models)
    redact: Redact = Field(default_factory=Redact)

    _allowed_cache: frozenset[str] | None = PrivateAttr(default=None)
    _digest_cache: str | None = PrivateAttr(default=None)

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> Policy:
        """Validate a mapping; raise :class:`PolicyError` listing every problem.

        ``None`` is the empty policy: default budgets, and no tool allowed.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            got = render_value(data)
            raise PolicyError(
                [f"(top level): must be a mapping of sections, got {got}"], source=source
            )
        data = plain_tree(data, source)  # bounded sizes, depth and types, or PolicyError
        data = _read_pins(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PolicyError(
                format_validation_error(exc, data, model=cls), source=source
            ) from None
        except RecursionError:
            raise PolicyError(
                ["(top level): nested too deeply to validate"], source=source
            ) from None
        except Exception as exc:  # a validator that failed unexpectedly: still one line
            raise PolicyError(
                [f"(top level): cannot be validated ({error_text(exc)})"], source=source
            ) from None

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse YAML (JSON is YAML too) and validate it.

        A key given twice in one mapping is an error, and so is a text with no
        document at all (an empty or truncated file): write ``{}`` for a policy
        that allows nothing.
        """
        check_size(text, source)
        _not_empty(text, source)
        from corral.policy._yaml import parse_yaml  # PyYAML on first use: see _yaml

        data = parse_yaml(text, source)  # bounded: see corral.policy._input
        return cls.from_dict(_document(data, source), source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str | None = None) -> Policy:
        """Parse strict JSON (no trailing comma, no comment, no key twice) and validate it."""
        check_size(text, source)
        _not_empty(text, source)
        data = parse_json(text, source)  # bounded: see corral.policy._input
        return cls.from_dict(_document(data, source), source=source)

    @property
    def observed_guards(self) -> frozenset[Guard]:
        """The guards that record what they would stop instead of stopping it.

        ``mode: observe`` observes every guard but ``approvals``; a mapping names them.
        """
        if isinstance(self.mode, GuardModes):
            return self.mode.observed()
        if self.mode == "observe":
            return frozenset(g for g in GUARDS if g != "approvals")
        return frozenset()

    @property
    def mode_name(self) -> Literal["enforce", "observe", "mixed"]:
        """``enforce`` (no guard observed), ``observe`` (all of them), else ``mixed``."""
        observed = self.observed_guards
        if not observed:
            return "enforce"
        return "observe" if observed >= frozenset(GUARDS) - {"approvals"} else "mixed"

    def allows(self, name: str) -> bool:
        """Exact-match allowlist lookup: no case folding, no trimming, no wildcards."""
        return name in self._allowed

    @property
    def _allowed(self) -> frozenset[str]:
        cached = self._allowed_cache
        if cached is None:
            cached = self._allowed_cache = frozenset(self.tools.allow)
        return cached

    def spec(self, name: str) -> ToolSpec | None:
        return self.tools.specs.get(name)

    @property
    def digest(self) -> str:
        """A stable hash of the policy's meaning (for traces and replay).

        Key order, defaults spelled out or left out, and ``1.50`` versus ``1.5``
        do not change it.
        """
        cached = self._digest_cache  # read once: a private attribute costs ~2 us a read
        if cached is None:
            body = json.dumps(
                self.model_dump(), sort_keys=True, separators=(",", ":"), default=_canonical
            )
            cached = self._digest_cache = hashlib.sha256(body.encode()).hexdigest()[:16]
        return cached

    def warnings(self) -> list[str]:
        """Things that are valid but probably not meant."""
        out = []
        for name in self.tools.specs:
            if name not in self._allowed:
                out.append(
                    f"tools.specs.{name}: has a spec but is not in tools.allow, so it is denied"
                )
        return out


def _read_pins(data: dict[str, Any], source: str | None) -> dict[str, Any]:
    """``tools.pins`` naming a lock file (beside the policy file ``source``, or relative to
    the working directory): the digests it pins, read now (:mod:`corral.policy.locks`)."""
    tools = data.get("tools")
    if not isinstance(tools, dict) or not isinstance(tools.get("pins"), str):
        return data
    named = tools["pins"]
    from corral.policy.locks import digests, read_pins

    path = Path(named)
    if source is not None and not path.is_absolute():
        path = Path(source).parent / path
    try:
        pins = digests(read_pins(path, hint="corral check POLICY --tools MODULE:OBJECT --pin"))
    except ConfigError as exc:
        raise PolicyError([f"tools.pins: {exc}"], source=source) from None
    return {**data, "tools": {**tools, "pins": pins}}


def _canonical(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return to_jsonable_python(value)  # dates and the like in free-form fields (`enum`)


_NOTHING = re.compile(r"^\s*(#.*|---.*|\.\.\.\s*)?$")


def _not_empty(text: str, source: str | None) -> None:
    if all(_NOTHING.match(line) for line in text.splitlines()):
        raise PolicyError(
            ["(file): is empty (write {} for a policy that allows nothing)"], source=source
        )


def _document(data: Any, source: str | None) -> Any:
    # from_dict(None) is the empty policy, but a file that says `null` is a mistake.
    if data is None:
        raise PolicyError(["(top level): must be a mapping of sections, got null"], source=source)
    return data


def load_policy(path: str | Path) -> Policy:
    """Load a policy from a ``.yaml``, ``.yml`` or ``.json`` file.

    A ``.json`` file is parsed as strict JSON, anything else as YAML.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    >>> _ = f.write("tools: {allow: [kb.read]}"); f.close()
    >>> load_policy(f.name).tools.allow
    ['kb.read']
    >>> os.unlink(f.name)
    """
    p = Path(path)
    text = read_text(p)  # a regular file, bounded, UTF-8 (a byte-order mark dropped)
    if p.suffix.lower() == ".json":
        return Policy.from_json(text, source=str(p))
    return Policy.from_yaml(text, source=str(p))
