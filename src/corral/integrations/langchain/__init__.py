"""LangChain and LangGraph under corral's bounds.

- :class:`CorralMiddleware` governs an agent built with ``langchain.agents.create_agent``:
  one invocation is one corral run; model calls are reserved and settled, tools outside the
  policy are neither offered nor executed, every tool call passes corral's gateway, and a
  stop ends the agent with ``corral_stop`` in its state (:func:`stop_of` reads it back);
- :class:`ToolGate` puts the same gate on a LangGraph ``ToolNode`` you build yourself,
  under a run you open (:func:`corral_tools` gives the run LangChain's tools).

Needs ``pip install 'corral[langchain]'`` (LangChain and LangGraph).
"""

from __future__ import annotations

try:
    import langchain.agents.middleware  # noqa: F401
    import langgraph.prebuilt  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is installed in CI
    raise ImportError(
        "corral.integrations.langchain needs LangChain and LangGraph: "
        "pip install 'corral[langchain]'"
    ) from exc

from corral.integrations.langchain._gate import ToolGate
from corral.integrations.langchain._middleware import CorralMiddleware, CorralState
from corral.integrations.langchain._tools import corral_tools, stop_of

__all__ = ["CorralMiddleware", "CorralState", "ToolGate", "corral_tools", "stop_of"]
