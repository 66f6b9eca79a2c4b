"""Per-run limits, usage, and the reserve-then-settle meter.

A budget is charged *before* the action it pays for and settled to the actual
amount after; an action that does not fit is not started. At every grant,
committed plus held plus the new charge stays within every limit, so a cap is
never overshot by anything corral started.

>>> from decimal import Decimal
>>> m = Meter(Limits(max_tool_calls=2, max_usd=Decimal("1.00")))
>>> h = m.reserve(Charge(tool_calls=1, usd=Decimal("0.70")))
>>> _ = m.settle(h, Charge(tool_calls=1, usd=Decimal("0.70")))
>>> m.reserve(Charge(tool_calls=1, usd=Decimal("0.70")))
Traceback (most recent call last):
corral.Stop: max_usd:run (limit 1.00, would be 1.40)
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

from corral._safe import shown
from corral.exceptions import ConfigError, Stop
from corral.stops import StopReason

ZERO = Decimal(0)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """The caps of one run. ``None`` means no cap for that dimension."""

    max_steps: int = 30
    max_seconds: float = 90.0
    max_tool_calls: int = 15
    max_tokens: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_usd: Decimal | None = None
    tool_caps: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_with_mapping, (Limits, _fields_of(self), "tool_caps"))


def _fields_of(value: Any) -> dict[str, Any]:
    """A dataclass's fields, its read-only mappings as plain dicts (a ``mappingproxy``
    cannot be pickled or deep-copied)."""
    return {
        f.name: dict(v) if isinstance(v := getattr(value, f.name), MappingProxyType) else v
        for f in fields(value)
    }


def _with_mapping(cls: type[T], values: dict[str, Any], name: str) -> T:
    """``cls(**values)`` with the field ``name`` made read-only again."""
    return cls(**{**values, name: MappingProxyType(dict(values[name]))})


@dataclass(frozen=True, kw_only=True, slots=True)
class Charge:
    """An amount of budget: what an action reserves, or what it actually used."""

    steps: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = ZERO
    tool: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What a run has used. Seconds are split into active and waiting (for approvals).

    ``overrun_tokens`` and ``overrun_usd`` are the part of the usage above what was
    reserved (a provider that ignored ``max_tokens``); they are included in the
    totals, which always hold the actual figures.
    """

    steps: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: Decimal = ZERO
    active_seconds: float = 0.0
    waiting_seconds: float = 0.0
    tool_calls_by_tool: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    overrun_tokens: int = 0
    overrun_usd: Decimal = ZERO

    def __reduce__(self) -> tuple[Any, ...]:
        return (_with_mapping, (Usage, _fields_of(self), "tool_calls_by_tool"))

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def seconds(self) -> float:
        return self.active_seconds + self.waiting_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tool_calls": self.tool_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "tokens": self.tokens,
            "usd": str(self.usd),
            "active_seconds": round(self.active_seconds, 6),
            "waiting_seconds": round(self.waiting_seconds, 6),
            "tool_calls_by_tool": dict(self.tool_calls_by_tool),
            "overrun_tokens": self.overrun_tokens,
            "overrun_usd": str(self.overrun_usd),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """The usage :meth:`to_dict` wrote (missing fields are 0).

        Raises :class:`ValueError` naming the field for a figure no run could have
        used: not a whole count, a negative one, USD or seconds that are not finite
        decimals from 0. A stored record that fails this is damaged: resuming from it
        must not start with a credit.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"usage must be a mapping, got {type(data).__name__}")
        by_tool = data.get("tool_calls_by_tool", {})
        if not isinstance(by_tool, Mapping):
            raise ValueError(f"tool_calls_by_tool must be a mapping, got {shown(by_tool)}")
        return cls(
            steps=_count(data, "steps"),
            tool_calls=_count(data, "tool_calls"),
            input_tokens=_count(data, "input_tokens"),
            output_tokens=_count(data, "output_tokens"),
            usd=_amount(data, "usd"),
            active_seconds=_seconds(data, "active_seconds"),
            waiting_seconds=_seconds(data, "waiting_seconds"),
            tool_calls_by_tool=MappingProxyType(
                {str(k): _count(by_tool, k, "tool_calls_by_tool.") for k in by_tool}
            ),
            overrun_tokens=_count(data, "overrun_tokens"),
            overrun_usd=_amount(data, "overrun_usd"),
        )


def _count(data: Mapping[str, Any], key: str, prefix: str = "") -> int:
    value = data.get(key, 0)
    if type(value) is not int or value < 0:
        raise ValueError(f"{prefix}{key} must be a whole number >= 0, got {shown(value)}")
    return value


def _amount(data: Mapping[str, Any], key: str) -> Decimal:
    value = data.get(key, "0")
    try:
        amount = Decimal(value) if isinstance(value, str | int) else None
    except ArithmeticError:
        amount = None
    if isinstance(value, bool) or amount is None or not amount.is_finite() or amount < 0:
        raise ValueError(f"{key} must be a finite amount >= 0, got {shown(value)}")
    return amount


def _seconds(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ValueError(f"{key} must be a finite number of seconds >= 0, got {shown(value)}")
    return float(value)


@dataclass(slots=True)  # not frozen: one is built per call, and frozen __init__ costs 3x
class Hold:
    """A granted reservation; settle or refund it exactly once."""

    id: int
    charge: Charge


class _Tally:
    __slots__ = ("by_tool", "input_tokens", "output_tokens", "steps", "tool_calls", "usd")

    def __init__(self) -> None:
        self.steps = 0
        self.tool_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.usd = ZERO
        self.by_tool: dict[str, int] = {}

    def add(self, c: Charge, sign: int = 1) -> None:
        if c.steps:
            self.steps += sign * c.steps
        if c.tool_calls:
            self.tool_calls += sign * c.tool_calls
            if c.tool is not None:
                self.by_tool[c.tool] = self.by_tool.get(c.tool, 0) + sign * c.tool_calls
        if c.input_tokens:
            self.input_tokens += sign * c.input_tokens
        if c.output_tokens:
            self.output_tokens += sign * c.output_tokens
        if c.usd:
            self.usd += c.usd if sign > 0 else -c.usd


class Meter:
    """The run-scope budget: thread-safe reserve / settle / refund against :class:`Limits`.

    Refusals raise :class:`~corral.exceptions.Stop` naming the limit, the scope
    (``run`` or ``tool/<name>``) and the value usage would have reached.
    """

    def __init__(self, limits: Limits, *, usage: Usage | None = None) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._committed = _Tally()
        self._held = _Tally()
        self._holds: dict[int, Charge] = {}
        self._next = 0
        self.overrun = Charge()
        if usage is not None:
            self._committed.add(
                Charge(
                    steps=usage.steps,
                    tool_calls=usage.tool_calls,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    usd=usage.usd,
                )
            )
            self._committed.by_tool = dict(usage.tool_calls_by_tool)
            self.overrun = Charge(output_tokens=usage.overrun_tokens, usd=usage.overrun_usd)

    def _refusal(self, c: Charge) -> Stop | None:
        # Straight-line checks that build nothing unless they refuse: this runs on every
        # tool and model call, so it must cost well under a microsecond when all is well.
        lim, com, held = self.limits, self._committed, self._held
        if c.steps and com.steps + held.steps + c.steps > lim.max_steps:
            return _refuse("max_steps", "run", c, lim.max_steps, com.steps + held.steps + c.steps)
        if c.tool_calls:
            used = com.tool_calls + held.tool_calls + c.tool_calls
            if used > lim.max_tool_calls:
                return _refuse("max_tool_calls", "run", c, lim.max_tool_calls, used)
            tool = c.tool
            if tool is not None and lim.tool_caps and tool in lim.tool_caps:
                used = com.by_tool.get(tool, 0) + held.by_tool.get(tool, 0) + c.tool_calls
                if used > lim.tool_caps[tool]:
                    return _refuse("max_tool_calls", f"tool/{tool}", c, lim.tool_caps[tool], used)
        if c.input_tokens or c.output_tokens:
            tin = com.input_tokens + held.input_tokens + c.input_tokens
            tout = com.output_tokens + held.output_tokens + c.output_tokens
            if lim.max_tokens is not None and tin + tout > lim.max_tokens:
                return _refuse("max_tokens", "run", c, lim.max_tokens, tin + tout)
            if c.input_tokens and lim.max_input_tokens is not None and tin > lim.max_input_tokens:
                return _refuse("max_tokens", "run/input", c, lim.max_input_tokens, tin)
            if (
                c.output_tokens
                and lim.max_output_tokens is not None
                and tout > lim.max_output_tokens
            ):
                return _refuse("max_tokens", "run/output", c, lim.max_output_tokens, tout)
        if c.usd and lim.max_usd is not None:
            would_be = com.usd + held.usd + c.usd
            if would_be > lim.max_usd:
                return _refuse("max_usd", "run", c, lim.max_usd, would_be)
        return None

    def fits(self, charge: Charge) -> Stop | None:
        """The refusal a reservation of ``charge`` would meet now, or ``None``; holds nothing."""
        with self._lock:
            return self._refusal(charge)

    def reserve(self, charge: Charge) -> Hold:
        """Hold ``charge`` or raise :class:`Stop` (all dimensions at once, all or nothing)."""
        with self._lock:
            refusal = self._refusal(charge)
            if refusal is not None:
                raise refusal
            self._next += 1
            self._holds[self._next] = charge
            self._held.add(charge)
            return Hold(self._next, charge)

    def settle(self, hold: Hold, actual: Charge) -> Charge:
        """Replace the held amount with what was actually used; returns what was recorded.

        ``actual`` may exceed the hold (a provider ignored ``max_tokens``): it is
        recorded as it is, never trimmed, and the excess is added to :attr:`overrun`.
        A figure no action can have used (negative, not finite, not a whole count) is
        never recorded: the hold's own figure stands in for it, so a settlement
        never credits the budget.
        """
        with self._lock:
            charge = self._holds.pop(hold.id, None)
            if charge is None:
                raise ConfigError(f"hold {hold.id} was already settled or refunded")
            self._held.add(charge, -1)
            if actual is charge:
                self._committed.add(actual)  # the common case: used exactly what was held
                return actual
            actual = _no_credit(actual, charge)
            if actual.tool is None and charge.tool is not None:
                actual = replace(actual, tool=charge.tool)
            self._committed.add(actual)
            over_in = max(0, actual.input_tokens - charge.input_tokens)
            over_out = max(0, actual.output_tokens - charge.output_tokens)
            over_usd = max(ZERO, actual.usd - charge.usd)
            if over_in or over_out or over_usd:
                o = self.overrun
                self.overrun = Charge(
                    input_tokens=o.input_tokens + over_in,
                    output_tokens=o.output_tokens + over_out,
                    usd=o.usd + over_usd,
                )
            return actual

    def commit(self, actual: Charge) -> None:
        """Record usage that was not reserved here (observe mode's watching meter); a
        figure no action can have used counts as 0, never as a credit."""
        with self._lock:
            self._committed.add(_no_credit(actual, _NOTHING))

    def refund(self, hold: Hold) -> None:
        """Give back a hold whose action did not happen (denied, refused, not started)."""
        with self._lock:
            charge = self._holds.pop(hold.id, None)
            if charge is not None:
                self._held.add(charge, -1)

    def commit_outstanding(self) -> list[Charge]:
        """Record every hold never settled as used at what it held (the run's end: the
        action may have happened); returns those charges."""
        with self._lock:
            charges = list(self._holds.values())
            self._holds.clear()
            for charge in charges:
                self._held.add(charge, -1)
                self._committed.add(charge)
            return charges

    def usage(self, *, active_seconds: float = 0.0, waiting_seconds: float = 0.0) -> Usage:
        with self._lock:
            c = self._committed
            return Usage(
                steps=c.steps,
                tool_calls=c.tool_calls,
                input_tokens=c.input_tokens,
                output_tokens=c.output_tokens,
                usd=c.usd,
                active_seconds=active_seconds,
                waiting_seconds=waiting_seconds,
                tool_calls_by_tool=MappingProxyType({k: v for k, v in c.by_tool.items() if v}),
                overrun_tokens=self.overrun.input_tokens + self.overrun.output_tokens,
                overrun_usd=self.overrun.usd,
            )

    def held(self) -> Charge:
        with self._lock:
            h = self._held
            return Charge(
                steps=h.steps,
                tool_calls=h.tool_calls,
                input_tokens=h.input_tokens,
                output_tokens=h.output_tokens,
                usd=h.usd,
            )


_NOTHING = Charge()


def _no_credit(actual: Charge, held: Charge) -> Charge:
    """``actual`` with each figure no action can have used (negative, not finite, not a
    whole count) replaced by ``held``'s: usage only ever adds to a budget."""
    steps, calls, tin, tout, usd = (
        actual.steps,
        actual.tool_calls,
        actual.input_tokens,
        actual.output_tokens,
        actual.usd,
    )
    if (
        type(steps) is int
        and steps >= 0
        and type(calls) is int
        and calls >= 0
        and type(tin) is int
        and tin >= 0
        and type(tout) is int
        and tout >= 0
        and type(usd) is Decimal
        and usd.is_finite()
        and usd >= 0
    ):
        return actual
    return Charge(
        steps=steps if type(steps) is int and steps >= 0 else held.steps,
        tool_calls=calls if type(calls) is int and calls >= 0 else held.tool_calls,
        input_tokens=tin if type(tin) is int and tin >= 0 else held.input_tokens,
        output_tokens=tout if type(tout) is int and tout >= 0 else held.output_tokens,
        usd=usd if type(usd) is Decimal and usd.is_finite() and usd >= 0 else held.usd,
        tool=actual.tool,
    )


def _refuse(reason: StopReason, scope: str, c: Charge, limit: Any, would_be: Any) -> Stop:
    what = reason.replace("max_", "").replace("_", " ")
    return Stop(
        reason,
        scope,
        scope=scope,
        tool=c.tool,
        limit=limit,
        observed=would_be,
        message=f"{what} limit {limit} for the {scope} would be passed ({would_be})",
    )


def limits_from_policy(budgets: Any, tool_caps: Mapping[str, int]) -> Limits:
    """Build :class:`Limits` from a policy's ``budgets`` section and per-tool ``max_calls``."""
    return Limits(
        max_steps=budgets.max_steps,
        max_seconds=float(budgets.max_seconds),
        max_tool_calls=budgets.max_tool_calls,
        max_tokens=budgets.max_tokens,
        max_input_tokens=budgets.max_input_tokens,
        max_output_tokens=budgets.max_output_tokens,
        max_usd=budgets.max_usd,
        tool_caps=MappingProxyType(dict(tool_caps)),
    )
