"""What one golden run measured: its stop, answer, tool calls, requests, tokens and cost,
as a baseline stores them.

>>> f = Figures(stop_reason="ok", answer="hi", tool_calls=2, requests=3, tokens=300)
>>> f.tokens_per_request
100.0
>>> Figures.from_dict(f.to_dict()) == f
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from corral.result import RunResult


@dataclass(frozen=True, kw_only=True)
class Figures:
    """One run's figures. ``requests`` counts model calls; ``usd`` is the run's cost
    (model calls and tools)."""

    stop_reason: str
    answer: str | None = None
    tool_calls: int = 0
    by_tool: Mapping[str, int] = field(default_factory=dict)
    requests: int = 0
    tokens: int = 0
    usd: Decimal = Decimal(0)
    error: str | None = None

    @property
    def tokens_per_request(self) -> float:
        return round(self.tokens / self.requests, 1) if self.requests else 0.0

    @classmethod
    def of(cls, result: RunResult) -> Figures:
        usage = result.usage
        return cls(
            stop_reason=result.stop_reason,
            answer=result.answer,
            tool_calls=usage.tool_calls,
            by_tool=dict(sorted(usage.tool_calls_by_tool.items())),
            requests=usage.steps,
            tokens=usage.tokens,
            usd=usage.usd,
            error=result.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stop_reason": self.stop_reason,
            "answer": self.answer,
            "tool_calls": self.tool_calls,
            "by_tool": dict(self.by_tool),
            "requests": self.requests,
            "tokens": self.tokens,
            "tokens_per_request": self.tokens_per_request,
            "usd": str(self.usd),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Figures:
        """The figures :meth:`to_dict` wrote (``tokens_per_request`` is derived)."""
        return cls(
            stop_reason=data["stop_reason"],
            answer=data.get("answer"),
            tool_calls=data["tool_calls"],
            by_tool=dict(data.get("by_tool") or {}),
            requests=data["requests"],
            tokens=data["tokens"],
            usd=Decimal(str(data["usd"])),
            error=data.get("error"),
        )
