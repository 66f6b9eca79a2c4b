"""Integrations: corral around calls you make with a vendor's own SDK, and around agents
built on a framework.

- ``openai``: ``chat_completion`` / ``achat_completion`` and ``settle_from_response``
  for the ``openai`` SDK;
- ``anthropic``: ``create_message`` / ``acreate_message`` and ``settle_from_response``
  for the ``anthropic`` SDK;
- ``_calls``: what both share (settling a ``model_call`` block from a response, the
  stop for a truncated answer);
- ``openai_agents``: the OpenAI Agents SDK (``govern``, ``run_config``; ``corral[openai-agents]``);
- ``pydantic_ai``: Pydantic AI (the ``Corral`` capability; ``corral[pydantic-ai]``);
- ``langchain``: LangChain's ``create_agent`` and LangGraph (``CorralMiddleware``,
  ``ToolGate``; ``corral[langchain]``).

Each helper puts one SDK call inside a run's model-call reservation (``run.model_call``),
and each framework adapter passes the framework's tool calls through the run's split
(authorize, the framework executes, report) at the framework's own extension points, so
they need the loop: this part sits above ``corral.loop`` and may import it and everything
below it. The model adapters themselves (``corral.models``) import nothing of the loop;
the SDKs are never imported here (the caller passes its client), and a framework only by
its own adapter, which nothing else in corral imports (docs/integrations.md).
"""
