"""Pydantic AI's quick-start agent (the roulette wheel), governed by corral.

Runs offline: Pydantic AI's own ``TestModel`` stands in for ``'openai:gpt-4o'`` (it calls
every tool once, then answers). The lines marked ``# + corral`` are all corral adds.

    python examples/integrations/pydantic_ai_agent.py
"""

from pydantic_ai import Agent, RunContext
from pydantic_ai.models.test import TestModel

import corral  # + corral
from corral.integrations.pydantic_ai import Corral  # + corral

tools = {"allow": ["roulette_wheel"], "specs": {"roulette_wheel": {"effect": "read"}}}  # + corral
policy = corral.Policy.from_dict({"tools": tools, "budgets": {"max_tool_calls": 5}})  # + corral
governed = Corral(policy, store="memory://", agent="roulette")  # + corral

roulette_agent = Agent(
    TestModel(),  # 'openai:gpt-4o' in the quick-start
    deps_type=int,
    output_type=bool,
    system_prompt=(
        "Use the `roulette_wheel` function to see if the "
        "customer has won based on the number they provide."
    ),
    capabilities=[governed],  # + corral
)


@roulette_agent.tool
async def roulette_wheel(ctx: RunContext[int], square: int) -> str:
    """check if the square is a winner"""
    return "winner" if square == ctx.deps else "loser"


success_number = 18
result = roulette_agent.run_sync("Put my money on square eighteen", deps=success_number)
print(result.output)
print(governed.result(result).stop_reason)  # + corral
