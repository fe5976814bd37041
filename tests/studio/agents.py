"""Agents that the studio tests load by import path (`tests.studio.agents:...`)."""

from __future__ import annotations

import asyncio
import re

from tapeagents import Agent, FinalAnswer, LLMNode, ToolEnvironment
from tapeagents.llms import LLM, LLMOutput, Prompt, Usage, tool_call

SYSTEM = "You are a careful calculator. Use the add tool for sums, then give the final answer."


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class SlowCalculator(LLM):
    """A scripted model that takes `delay` seconds per answer (without blocking the event loop),
    so a browser can watch the steps of a run arrive one by one.

    It adds the two numbers of the last user message with the `add` tool, then answers with the
    tool's result.
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__("scripted-calculator")
        self.delay = delay

    async def generate(self, prompt: Prompt) -> LLMOutput:
        if self.delay:
            await asyncio.sleep(self.delay)
        last = prompt.messages[-1]
        usage = Usage(prompt_tokens=40 * len(prompt.messages), completion_tokens=12)
        if last["role"] == "user":
            a, b = (re.findall(r"\d+", str(last["content"])) + ["0", "0"])[:2]
            return LLMOutput(
                content=f"I will add {a} and {b} with the tool.",
                tool_calls=[tool_call("add", f'{{"a": {a}, "b": {b}}}')],
                usage=usage,
                cost=0.00021,
            )
        answer = str(last["content"])
        return LLMOutput(
            tool_calls=[tool_call("final_answer", f'{{"answer": "{answer}"}}')],
            usage=usage,
            cost=0.00008,
        )


def make_calculator(delay: float = 0.0) -> tuple[Agent, ToolEnvironment]:
    env = ToolEnvironment([add])
    agent = Agent(
        "calc",
        nodes=[LLMNode("solve", system_prompt=SYSTEM, steps=[FinalAnswer], tools=env.tools)],
        llms=SlowCalculator(delay),
    )
    return agent, env


def calculator() -> tuple[Agent, ToolEnvironment]:
    """The calculator with an instant model."""
    return make_calculator()


def slow_calculator() -> tuple[Agent, ToolEnvironment]:
    """The calculator with a model that takes 0.8 s per answer."""
    return make_calculator(0.8)


def broken() -> Agent:
    raise RuntimeError("this agent cannot be built")
