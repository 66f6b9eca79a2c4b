"""LangChain's quick-start agent, governed by corral: the lines marked ``# corral`` are
all that was added. Runs offline: a fake chat model stands in for the provider.

    python examples/integrations/langchain_agent.py

prints the agent's answer and the corral run's stop reason. The run is recorded in the
default store (``CORRAL_DB``, else the per-user store): see it with ``corral runs``.
"""

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

import corral  # corral
from corral.integrations.langchain import CorralMiddleware, stop_of  # corral


class FakeToolModel(GenericFakeChatModel):
    """LangChain's fake chat model, able to take tools: it plays its messages in order."""

    def bind_tools(self, tools, **kwargs):
        return self


model = FakeToolModel(
    messages=iter(
        [
            AIMessage(
                content="", tool_calls=[{"name": "get_weather", "args": {"city": "sf"}, "id": "1"}]
            ),
            AIMessage(content="It's always sunny in sf!"),
        ]
    )
)


def get_weather(city: str) -> str:
    """Get weather for a given city."""
    return f"It's always sunny in {city}!"


policy = corral.Policy.from_dict(  # corral
    {"tools": {"allow": ["get_weather"], "specs": {"get_weather": {"effect": "read"}}}}  # corral
)  # corral

agent = create_agent(
    model=model,
    tools=[get_weather],
    system_prompt="You are a helpful assistant",
    middleware=[CorralMiddleware(policy)],  # corral
)

result = agent.invoke({"messages": [{"role": "user", "content": "what is the weather in sf"}]})
print(result["messages"][-1].content)
stop = stop_of(result)  # corral
print("stop reason:", stop.reason if stop else "ok")  # corral
