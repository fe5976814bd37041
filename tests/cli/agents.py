"""Agents and environments that the CLI tests load by path (`tests.cli.agents:...`)."""

from __future__ import annotations

from tapeagents import Agent, AssistantMessage, FinalAnswer, LLMNode, ToolEnvironment
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call


def echo(prompt: Prompt) -> str:
    return f"echo: {prompt.messages[-1]['content']}"


def chat_agent() -> Agent:
    """Answers every user message with "echo: <message>"."""
    return Agent("chat", nodes=[LLMNode()], llms=ScriptedLLM(echo))


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def calc_env() -> ToolEnvironment:
    return ToolEnvironment([add])


def calc_answers(prompt: Prompt) -> LLMOutput:
    """Calls `add` for a user question, then gives the final answer."""
    if prompt.messages[-1]["role"] == "user":
        return LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')])
    return LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')])


def calc_agent() -> Agent:
    return Agent(
        "calc",
        nodes=[LLMNode(steps=[AssistantMessage, FinalAnswer], tools=calc_env().tools)],
        llms=ScriptedLLM(calc_answers),
    )


def calc_with_env() -> tuple[Agent, ToolEnvironment]:
    return calc_agent(), calc_env()


TOOL_RUNS: list[tuple[int, int]] = []
"""The arguments of every run of `recording_env`'s `add`: proof of whether a tool ran."""


def recording_env() -> ToolEnvironment:
    """Like `calc_env`, but its `add` notes each run in `TOOL_RUNS`."""

    def add(a: int, b: int) -> int:
        """Add two integers."""
        TOOL_RUNS.append((a, b))
        return a + b

    return ToolEnvironment([add])


def calc_with_recording_env() -> tuple[Agent, ToolEnvironment]:
    return calc_agent(), recording_env()


ready_agent = chat_agent()
not_an_agent = 42


def needs_arguments(model: str) -> Agent:
    return chat_agent()


def broken_factory() -> Agent:
    raise RuntimeError("no API key")


def changed_calc_agent() -> Agent:
    """`calc_agent` with a new system prompt: its prompts no longer match the recording."""
    return Agent(
        "calc",
        nodes=[
            LLMNode(
                system_prompt="Be terse.",
                steps=[AssistantMessage, FinalAnswer],
                tools=calc_env().tools,
            )
        ],
        llms=ScriptedLLM(calc_answers),
    )
