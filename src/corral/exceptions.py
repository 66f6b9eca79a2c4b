"""Every exception corral raises, in three families kept apart::

    CorralError
    ├── ConfigError                developer mistakes: fix the code or the config
    │   ├── PolicyError            a policy file or dict is invalid (one line per problem)
    │   ├── SuiteError             a golden suite, script or baseline file is invalid
    │   └── ToolDefinitionError    a @tool cannot be built (bad name, bad schema)
    ├── Stop                       enforced outcomes: the run is over, with a stop reason
    ├── ControlSignal              control flow between corral and tools, not failures
    │   ├── NotExecuted            raised by a tool: "nothing happened", its key is released
    │   └── ToolRejected           a call was refused but the run goes on: tell the model
    ├── ApprovalError              an operator's decision cannot be applied (unknown,
    │                              already decided, expired, another tenant's, self-approval)
    ├── AccessError                an API key cannot do what was asked
    │   ├── InvalidKey             malformed, unknown, revoked or expired (never says which)
    │   └── Forbidden              a valid key whose role or tenant does not permit it
    └── StoreError                 the control plane's state cannot be read or written
        ├── StoreGone              its file was removed or replaced while open: for good
        └── StoreMissing           no store at the path a read-only command named

A :class:`Stop` never means a bug: it is how a bound is enforced. Catch it to
learn why (``stop.reason``, ``stop.detail``, ``stop.message``, ``stop.retryable``).
"""

from __future__ import annotations

from typing import Any

from corral._safe import error_text
from corral.stops import RETRYABLE_REASONS, StopInfo, StopReason


class CorralError(Exception):
    """Base of everything corral raises.

    Every one survives ``pickle`` and ``copy.deepcopy`` whole (its message and attributes):
    results and stops cross process boundaries (a worker pool, a task queue).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt without calling __init__ again: subclasses' constructors take other
        # arguments than the message that ``Exception`` would hand them back.
        return (_rebuilt, (type(self), self.args, dict(self.__dict__)))


def _rebuilt(cls: type[CorralError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigError(CorralError):
    """A developer mistake in configuration or setup."""


class PolicyError(ConfigError):
    """A policy is invalid. ``problems`` holds one ``path: message`` line per problem."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        # One line each, whatever a value quoted in a problem held.
        self.problems = [
            " ".join(p.splitlines()) if "\n" in p or "\r" in p else p for p in problems
        ]
        self.source = source
        where = f"{source}: " if source else ""
        count = len(self.problems)
        head = f"{where}invalid policy ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


class SuiteError(ConfigError):
    """A golden suite (or its script or baseline file) is invalid. ``problems`` holds one
    ``FILE:LINE: path: message`` line per problem (the line where the file says it)."""

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        lines = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [" ".join(p.splitlines()) for p in lines]
        self.source = source
        count = len(self.problems)
        where = f"{source}: " if source else ""
        head = f"{where}invalid golden file ({count} problem{'s' if count != 1 else ''})"
        super().__init__(head + "".join(f"\n  {p}" for p in self.problems))


class ToolDefinitionError(ConfigError):
    """A tool definition is unusable (bad name, unsupported signature, bad schema)."""


class Stop(CorralError):
    """The run must stop, for the reason given.

    >>> s = Stop("tool_denied", detail="browser.open")
    >>> str(s), s.retryable
    ('tool_denied:browser.open', False)
    """

    #: The id of the run this stop ended, set when the run records it (None until then,
    #: and for a stop raised outside any run). A stop carried into another run's ``with``
    #: block is that block's agent error, not its stop.
    run_id: str | None = None

    def __init__(
        self,
        reason: StopReason,
        detail: str = "",
        *,
        message: str = "",
        tool: str | None = None,
        scope: str | None = None,
        limit: Any = None,
        observed: Any = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
        info: StopInfo | None = None,
    ) -> None:
        if info is None:
            info = StopInfo(
                reason=reason,
                detail=detail,
                message=message,
                tool=tool,
                scope=scope,
                limit=limit,
                observed=observed,
                retryable=reason in RETRYABLE_REASONS if retryable is None else retryable,
                retry_after=retry_after,
                extra=dict(extra or {}),
            )
        self.info = info
        super().__init__(str(info) + (f": {info.message}" if info.message else ""))

    @classmethod
    def from_info(cls, info: StopInfo) -> Stop:
        return cls(info.reason, info=info)

    @property
    def reason(self) -> StopReason:
        return self.info.reason

    @property
    def detail(self) -> str:
        return self.info.detail

    @property
    def why(self) -> str | None:
        """The sub-reason (``not_allowed``, ``unknown_tool``, ...), if any."""
        return self.info.why

    @property
    def message(self) -> str:
        """What happened, in words (``""`` when the reason and detail say it all), like
        :attr:`ToolRejected.message`."""
        return self.info.message

    @property
    def retryable(self) -> bool:
        return self.info.retryable

    @property
    def retry_after(self) -> float | None:
        return self.info.retry_after

    def __str__(self) -> str:
        return str(self.info)


class ControlSignal(CorralError):
    """A signal between corral and a tool; not a failure."""


class NotExecuted(ControlSignal):
    """Raised by a tool to say it did nothing: the call's idempotency key is released
    and the call is reported to the model as not executed."""


class ToolRejected(ControlSignal):
    """A tool call was refused, and the run may go on: show ``message`` to the model.

    Raised by ``Run.call`` for mistakes the model can fix (invalid arguments, an
    unknown tool name) within the policy's bound, and for denials when the policy
    says ``on_denied: tell_model``. If it leaves a ``with Run(...)`` block
    uncaught, the run stops with ``reason``.
    """

    def __init__(self, reason: StopReason, message: str, *, tool: str, detail: str = "") -> None:
        self.reason = reason
        self.tool = tool
        self.detail = detail
        self.message = message
        super().__init__(message)


class ApprovalError(CorralError):
    """An approval cannot be decided as asked: it does not exist (for this tenant), it
    was already decided or has expired, or the approver is the run's own agent."""


class AccessError(CorralError):
    """An API key cannot be used for what was asked (see :mod:`corral.controls.keys`)."""


class InvalidKey(AccessError):
    """The API key is not one corral accepts: malformed, unknown, revoked or expired. The
    message is the same for all four and never repeats the key."""

    def __init__(self, message: str = "invalid API key") -> None:
        super().__init__(message)


class Forbidden(AccessError):
    """A valid API key whose role or tenant does not permit the action asked."""


class StoreError(CorralError):
    """The store cannot be read or written; governed actions fail closed."""

    @classmethod
    def of(cls, exc: BaseException) -> StoreError:
        """``exc`` as a StoreError: itself if it is one, else one naming it. A store object
        may raise anything (a user's own, a driver's error); whatever it raises means its
        state cannot be relied on."""
        if isinstance(exc, StoreError):
            return exc
        return cls(f"the store failed: {error_text(exc)}")


class StoreGone(StoreError):
    """The store's file was removed or replaced while it was open (see
    :class:`~corral.stores.sqlite.SQLiteStore`). It does not come back in this process:
    what it would write now goes where nobody reads, so every later call fails, with no
    grace period."""


class StoreMissing(StoreError):
    """No store exists where a command that only reads or changes operator state looked
    (``open_store(url, create=False)``): it never creates one, since an agent would not be
    using a store that did not exist."""
