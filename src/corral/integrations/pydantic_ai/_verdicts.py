"""What crosses a durable boundary: a call's verdict and its report, and the stop that ends
the agent run (:class:`RunStopped`, the framework's ``AgentRunError`` and corral's ``Stop``).

Imports ``pydantic_ai`` and corral's exceptions and stops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic_ai.exceptions import AgentRunError, SkipToolExecution, ToolFailed
from pydantic_ai.tools import ToolDenied

from corral.exceptions import Stop
from corral.result import RunResult
from corral.stops import StopInfo


class RunStopped(AgentRunError, Stop):
    """The agent run was stopped by corral: an ``AgentRunError`` (the framework's way to
    end a run) that is also the run's :class:`corral.Stop`.

    ``stop`` is corral's stop (``reason``, ``detail``, ``retryable``, ...; also readable
    on this exception), ``result`` the corral run's result once the run has ended
    (``None`` while it has not, or when you own the run: read ``run.result`` then).
    """

    def __init__(self, stop: Stop) -> None:
        text = str(stop) + (f": {stop.info.message}" if stop.info.message else "")
        AgentRunError.__init__(self, text)
        self.info = stop.info
        self.run_id = stop.run_id
        self.stop = stop
        self.result: RunResult | None = None

    @property  # AgentRunError's field: the whole text (``stop.message`` is corral's own)
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    @message.setter
    def message(self, value: str) -> None:
        self.args = (value,)

    def __str__(self) -> str:
        return self.message


def stopped(stop: Stop) -> RunStopped:
    return stop if isinstance(stop, RunStopped) else RunStopped(stop)


# -- what a call's verdict looks like across a durable boundary -------------------------


@dataclass
class Verdict:
    """What ``run.authorize`` decided for one call, in a form a durable engine can record.

    ``execute``: run the tool with ``arguments``; ``replayed``: do not, ``output`` is the
    observation; ``denied`` / ``failed``: tell the model ``message`` (the framework's own
    denial, or a failed call); ``stopped``: the run is over (``stop``, a
    :meth:`corral.stops.StopInfo.to_dict`).
    """

    kind: Literal["execute", "replayed", "denied", "failed", "stopped"]
    arguments: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    message: str = ""
    stop: dict[str, Any] | None = None


@dataclass
class Report:
    """What ``run.report`` made of a tool's output (the observation), or the stop it raised."""

    observation: Any = None
    stop: dict[str, Any] | None = None


def stop_of(data: Mapping[str, Any]) -> Stop:

    info = StopInfo(**{k: v for k, v in data.items() if k in StopInfo.__dataclass_fields__})
    return Stop.from_info(info)


def info_of(stop: Stop) -> dict[str, Any]:

    return asdict(stop.info)


def raise_verdict(verdict: Verdict) -> None:
    """Raise what the framework expects for a verdict other than ``execute``."""
    if verdict.kind == "stopped":
        assert verdict.stop is not None
        raise stopped(stop_of(verdict.stop))
    if verdict.kind == "replayed":
        raise SkipToolExecution(verdict.output)
    if verdict.kind == "denied":
        raise SkipToolExecution(ToolDenied(verdict.message))
    if verdict.kind == "failed":
        raise ToolFailed(verdict.message)


def observed(report: Report) -> Any:
    """The observation the model sees, or the stop the report carries, raised."""
    if report.stop is not None:
        raise stopped(stop_of(report.stop))
    return report.observation
