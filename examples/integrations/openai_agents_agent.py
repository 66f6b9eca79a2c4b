"""The OpenAI Agents SDK's quick-start agent, governed by corral (the lines marked
``# corral``). Runs offline: the SDK's own scripted model stands in for the API.

    python examples/integrations/openai_agents_agent.py

Prints the agent's answer, then the run's stop reason.
"""

from __future__ import annotations

import asyncio

from agents import Agent, Runner, function_tool, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

import corral  # corral
from corral.integrations.openai_agents import govern, run_config, tools_of  # corral

set_tracing_disabled(True)  # offline: no trace export


@function_tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return f"The weather in {city} is sunny."


# Stands for the API model: asks for the tool, then answers with what it returned.
model = ScriptedModel(
    [
        [function_call("get_weather", {"city": "Tokyo"}, call_id="call_1")],
        [assistant_message("The weather in Tokyo is sunny.")],
    ]
)

agent = Agent(
    name="Assistant",
    instructions="You are a helpful assistant.",
    tools=[get_weather],
    model=model,
)

policy = corral.Policy.from_yaml("""
tools:
  allow: [get_weather]
  specs: {get_weather: {effect: read}}
budgets: {max_tool_calls: 5, max_seconds: 30}
""")  # corral


async def main() -> None:
    async with corral.AsyncRun(policy, tools=tools_of(agent), store="memory://") as run:  # corral
        result = await Runner.run(
            govern(agent, run),  # corral
            "What's the weather in Tokyo?",
            run_config=run_config(run),  # corral
        )
        await run.finish(result.final_output)  # corral
        print(result.final_output)
    print("stop reason:", run.result.stop_reason)  # corral


if __name__ == "__main__":
    asyncio.run(main())
