"""What a run keeps so that ``corral replay`` can run it again offline: a recording.

A :class:`Recorder` is filled as the run goes (the gateway calls it; nothing here does
I/O) and turned into one JSON body when the run ends (:meth:`Recorder.body`):

- ``policy``: the policy's digest (its document is stored once per digest beside it,
  :func:`policy_document`);
- ``tools``: each tool's definition (name, description, argument and output schemas,
  effect, cost, timeout, retries, ...) and its digest (:func:`tool_definition`);
- ``shared``: the shared state the run met, read when it first needed it: the clock's
  reading at the start (``wall``), the kill switches, and each breaker's state and degrade
  window (with this process's successes not yet written);
- ``loop``: what ``corral.run`` was given besides the task (its instructions and
  ``max_tokens``), or null for a run its caller drove with ``Run``;
- ``steps``: in order, every model call (the request's digest over its messages and tool
  definitions, the response: text, tool calls with their ids and arguments, usage, model
  id, finish reason; or the error) and every executed tool attempt (tool, call id,
  argument digest, attempt, outcome, seconds, and the output as the model saw it).

Bodies (responses, outputs) are redacted at the end with the run's final redactor, as
events are (:mod:`corral.record.redact`). Past ``max_bytes`` of bodies the oldest are kept
as their digest and size only (``summarised``; a long run does so as it goes, holding about
twice the cap at most): a replay then says it cannot reproduce the run past the first one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from corral.policy.schema import Policy
from corral.record.redact import Redactor
from corral.tools import Tool

#: The version of a recording's layout (a replay refuses others).
FORMAT = 1
#: A step's body kept past the cap: only its digest and size.
SUMMARISED = "summarised"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces, amounts as numbers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def digest_of(value: Any) -> str:
    """The SHA-256 (hex) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as a JSON document that :meth:`Policy.from_dict` rebuilds with the same
    digest (defaults left out, amounts as numbers)."""
    data: dict[str, Any] = json.loads(
        canonical_json(policy.model_dump(mode="python", exclude_defaults=True))
    )
    return data


def tool_definition(tool: Tool) -> dict[str, Any]:
    """Everything about ``tool`` that governs its calls (its function aside)."""
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.args_schema),
        "output_schema": dict(tool.output_schema) if tool.output_schema else None,
        "effect": tool.effect,
        "effect_declared": tool.effect_declared,
        "cost_usd": str(tool.cost_usd),
        "expensive": tool.expensive,
        "timeout": tool.timeout,
        "retries": tool.retries,
        "idempotent": tool.idempotent,
        "idempotency_key_from": list(tool.idempotency_key_from),
        "context": tool.context_param is not None,
        "credentials": list(tool.credentials),
        "is_async": tool.is_async,
        "described": tool.described,
    }


class RequestDigests:
    """Digests of model requests: over each message redacted as the recording is (so that
    a replay, fed redacted bodies, asks the same), then the tool definitions. A message's
    own digest is computed once per message object: a loop's history grows a turn at a
    time, and each turn's request repeats the ones before."""

    __slots__ = ("_memo", "_tools")

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Mapping[str, Any], str]] = {}
        # The tools offered, by their names: a run's tool definitions do not change.
        self._tools: dict[tuple[Any, ...], str] = {}

    def __call__(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]],
        redactor: Redactor,
    ) -> str:
        memo = self._memo
        parts = []
        for message in messages:
            known = memo.get(id(message))
            if known is None or known[0] is not message:  # kept: its id stays its own
                known = memo[id(message)] = (message, digest_of(redactor.value(message)))
            parts.append(known[1])
        names = tuple(t.get("name") for t in tools)
        offered = self._tools.get(names)
        if offered is None:
            offered = self._tools[names] = digest_of(list(tools))
        parts.append(offered)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def error_of(error: BaseException | None) -> dict[str, str]:
    """An exception as the recording keeps it: its type's name and its text."""
    if error is None:
        return {"type": "Exception", "message": ""}
    try:
        message = str(error)
    except Exception:  # an exception that does not even print
        message = ""
    return {"type": type(error).__name__, "message": message[:2000]}


def response_body(value: Any) -> dict[str, Any]:
    """A model's response (a :class:`~corral.models.base.ModelResponse`) as JSON."""
    calls = []
    for c in getattr(value, "tool_calls", ()) or ():
        calls.append(
            {
                "id": getattr(c, "id", None),
                "name": getattr(c, "name", None),
                "arguments": getattr(c, "arguments", None),
            }
        )
    return {
        "text": getattr(value, "text", None),
        "tool_calls": calls,
        "input_tokens": getattr(value, "input_tokens", None),
        "output_tokens": getattr(value, "output_tokens", None),
        "model": getattr(value, "model", None),
        "finish_reason": getattr(value, "finish_reason", None),
    }


class Recorder:
    """One run's recording as it is made (see the module docstring)."""

    __slots__ = (
        "_held",
        "_kept_from",
        "_measured",
        "_sizes",
        "loop",
        "max_bytes",
        "policy",
        "requests",
        "shared",
        "steps",
        "tools",
    )

    def __init__(self, *, policy: str, max_bytes: int) -> None:
        self.policy = policy
        self.max_bytes = max_bytes
        self.tools: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, Any] = {"breakers": {}}
        #: Model calls as dicts, tool attempts as tuples (see :meth:`tool_attempt`).
        self.steps: list[dict[str, Any] | tuple[Any, ...]] = []
        #: What ``corral.run`` was given besides the task (``instructions``, ``max_tokens``);
        #: None for a run driven by its caller's own loop.
        self.loop: dict[str, Any] | None = None
        self.requests = RequestDigests()
        self._held = 0  # bytes held by the steps measured so far (about)
        #: Each step's body size as measured (0 once summarised), filled as steps are.
        self._sizes: list[int] = []
        self._measured = 0  # steps measured
        self._kept_from = 0  # the oldest step whose body is still held

    def model_call(self, step: dict[str, Any], size: int | None = None) -> None:
        """A model call: ``request``, ``endpoint``, ``price``, ``seconds``, ``outcome``
        and its ``response`` or ``error``; ``size``: its response's canonical JSON's length
        when the caller has it (else measured here)."""
        step["kind"] = "model"
        steps = self.steps
        self._sizes.extend(_held(steps[i]) for i in range(len(self._sizes), len(steps)))
        steps.append(step)
        self._sizes.append(_held(step) if size is None else size)
        self.bound()

    def bound(self) -> None:
        """Keep what the run holds near its cap: past twice ``max_bytes``, the oldest bodies
        are summarised now rather than at the end (called each model turn, each failed
        attempt, and every 64th step on the allow path)."""
        steps, sizes = self.steps, self._sizes
        sizes.extend(_held(steps[i]) for i in range(len(sizes), len(steps)))
        for i in range(self._measured, len(steps)):
            self._held += sizes[i]
        self._measured = len(steps)
        if self._held <= 2 * self.max_bytes:
            return
        for i in range(self._kept_from, len(steps)):
            if self._held <= self.max_bytes:
                break
            steps[i] = _summary(_expanded(steps[i]))
            self._held -= sizes[i]
            sizes[i] = 0
            self._kept_from = i + 1

    def tool_attempt(
        self,
        tool: str,
        call_id: str | None,
        args: str,
        attempt: int,
        seconds: float,
        outcome: str,
        body: Any,
    ) -> None:
        """An executed tool attempt; ``body`` is its output (``ok``, ``invalid``) or its
        error (:func:`error_of`). Kept as a tuple until the end: this is the allow path."""
        self.steps.append((tool, call_id, args, attempt, seconds, outcome, body))
        self.bound()

    def body(self, redactor: Redactor) -> tuple[dict[str, Any], str]:
        """The recording as stored, and its canonical JSON: bodies redacted, the oldest
        summarised when it would pass the cap."""
        sizes = self._sizes
        sizes.extend(_held(self.steps[i]) for i in range(len(sizes), len(self.steps)))
        steps = []
        for i, step in enumerate(self.steps):
            expanded = _expanded(step)
            redacted = _redacted(expanded, redactor)
            if redacted is not expanded:  # redaction changed a body: measure it again
                sizes[i] = _held(redacted)
            steps.append(redacted)
        body = {
            "format": FORMAT,
            "policy": self.policy,
            "tools": self.tools,
            "shared": self.shared,
            "loop": self.loop,
            "steps": steps,
            "summarised": 0,
        }
        summarised = _cap(steps, self.max_bytes, sizes)
        if summarised:
            body["summarised"] = summarised
        return body, canonical_json(body)


def _body_size(body: Any) -> int:
    """About how many bytes a body takes (its text's length, else its JSON's)."""
    if body is None:
        return 0
    if type(body) is str:
        return len(body)
    return len(canonical_json(body))


def _held(step: dict[str, Any] | tuple[Any, ...]) -> int:
    """About how many bytes of bodies a step holds (none once summarised)."""
    if isinstance(step, tuple):
        return _body_size(step[-1])
    if _summarised(step):
        return 0
    return sum(_body_size(step.get(k)) for k in _BODIES)


def _summarised(step: Mapping[str, Any]) -> bool:
    return any(isinstance(step.get(k), Mapping) and SUMMARISED in step[k] for k in _BODIES)


def _cap(steps: list[dict[str, Any]], max_bytes: int, sizes: list[int]) -> int:
    """Summarise the oldest steps' bodies until the bodies kept take at most ``max_bytes``
    (``sizes``: each step's, as measured); how many steps are summarised in all."""
    over = sum(sizes) - max_bytes
    for i, step in enumerate(steps):
        if over <= 0:
            break
        if sizes[i]:
            steps[i] = _summary(step)
            over -= sizes[i]
    return sum(1 for step in steps if _summarised(step))


_BODIES = ("response", "output")
#: A tool attempt's outcomes whose body is its output (the others' is their error).
_OUTPUTS = frozenset({"ok", "invalid"})


def _expanded(step: dict[str, Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A step as stored: a tool attempt's tuple made a dict."""
    if isinstance(step, dict):
        return step
    tool, call_id, args, attempt, seconds, outcome, body = step
    return {
        "kind": "tool",
        "tool": tool,
        "call_id": call_id,
        "args": args,
        "attempt": attempt,
        "seconds": seconds,
        "outcome": outcome,
        ("output" if outcome in _OUTPUTS else "error"): body,
    }


def _redacted(step: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """``step`` with its bodies redacted: a copy when that changed one, else ``step``."""
    out = step
    for key in (*_BODIES, "error"):
        value = step.get(key)
        if value is not None:
            clean = redactor.value(value)
            if clean is not value:
                if out is step:
                    out = dict(step)
                out[key] = clean
    return out


def _summary(step: dict[str, Any]) -> dict[str, Any]:
    """``step`` with its body replaced by its digest and size."""
    out = dict(step)
    for key in _BODIES:
        if key in out and out[key] is not None and not _summarised(out):
            text = canonical_json(out[key])
            out[key] = {
                SUMMARISED: hashlib.sha256(text.encode()).hexdigest(),
                "bytes": len(text),
            }
    return out
