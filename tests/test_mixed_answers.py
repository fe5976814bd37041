"""Answers with text and tool calls together, the shape hosted models send most: the text is a
thought, every call runs (those of one answer at the same time, results in call order), and the
model is asked again with a valid conversation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tapeagents import (
    Agent,
    AssistantMessage,
    FinalAnswer,
    LLMNode,
    Reasoning,
    ToolEnvironment,
    run,
    run_sync,
)
from tapeagents.chat_rules import validate_chat
from tapeagents.llms import LLMOutput, OpenAICompatLLM, Prompt, ScriptedLLM, tool_call
from tapeagents.orchestrator import Finished
from tests.batch.openai_stub import Stub, serve


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def answers(prompt: Prompt) -> LLMOutput:
    if prompt.messages[-1]["role"] == "user":
        return LLMOutput(
            content="I will look both up.",
            tool_calls=[
                tool_call("first", '{"city": "Oslo"}', id="c1"),
                tool_call("second", '{"city": "Rome"}', id="c2"),
            ],
        )
    return LLMOutput(content="Oslo is cold, Rome is warm.")


@pytest.mark.parametrize("declared", [False, True], ids=["default", "reasoning offered"])
def test_text_beside_tool_calls_is_a_thought_and_the_model_sees_the_results(
    declared: bool,
) -> None:
    started: list[str] = []
    both_started = asyncio.Event()

    async def first(city: str) -> str:
        """Look up the first city."""
        started.append("first")
        await asyncio.wait_for(both_started.wait(), 5)  # only returns if `second` runs meanwhile
        return f"cold in {city}"

    async def second(city: str) -> str:
        """Look up the second city."""
        started.append("second")
        both_started.set()
        await asyncio.sleep(0)
        return f"warm in {city}"

    env = ToolEnvironment([first, second])
    steps = [AssistantMessage, Reasoning] if declared else [AssistantMessage]
    llm = ScriptedLLM(answers)
    agent = Agent("weather", nodes=[LLMNode(steps=steps, tools=env.tools)], llms=llm)
    result = run_sync(agent, "Weather in Oslo and Rome?", env)

    assert result.reason == "awaiting_input"
    assert result.tape.kinds() == [
        "user",
        "reasoning",
        "tool_call",
        "tool_call",
        "tool_result",
        "tool_result",
        "assistant",
    ]
    assert result.tape.steps[1].text == "I will look both up."  # type: ignore[attr-defined]
    results = [s.content for s in result.tape.steps[4:6]]  # type: ignore[attr-defined]
    assert results == ["cold in Oslo", "warm in Rome"]  # in call order, though run together
    assert sorted(started) == ["first", "second"]
    # the second request shows the answer as the model wrote it, then one result per call
    node: Any = agent.nodes[0]
    last = node.make_prompt(agent, result.tape.model_copy(update={"steps": result.tape.steps[:6]}))
    validate_chat(last.messages, last.tools)
    assert [m["role"] for m in last.messages] == ["user", "assistant", "tool", "tool"]
    assert last.messages[1]["content"] == "I will look both up."
    assert [m["tool_call_id"] for m in last.messages[2:]] == ["c1", "c2"]


def test_tools_of_a_non_concurrent_environment_run_one_by_one() -> None:
    order: list[str] = []

    def first(city: str) -> str:
        """First."""
        order.append("first")
        return city

    def second(city: str) -> str:
        """Second."""
        order.append("second")
        return city

    env = ToolEnvironment([first, second], concurrent=False)
    agent = Agent("w", nodes=[LLMNode(tools=env.tools)], llms=ScriptedLLM(answers))
    result = run_sync(agent, "Weather?", env)
    assert result.reason == "awaiting_input" and order == ["first", "second"]


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    with serve() as server:
        yield server


async def test_a_streamed_mixed_answer_over_the_wire(stub: Stub) -> None:
    """Content and tool-call deltas interleaved in one stream, as hosted models send them."""
    env = ToolEnvironment([add])
    node = LLMNode(steps=[AssistantMessage, FinalAnswer], tools=env.tools)
    async with OpenAICompatLLM("mixed", base_url=stub.base_url) as llm:
        agent = Agent("calc", nodes=[node], llms=llm)
        finished: Finished | None = None
        async for event in run(agent, "call add", env):
            if isinstance(event, Finished):
                finished = event
        second = stub.requests[-1]["body"]
        # the same answer without streaming parses to the same steps
        ask = [{"role": "user", "content": "call add"}]
        whole = await llm.generate(Prompt(messages=ask, tools=node.prompt_tools()))
    assert finished is not None and finished.reason == "awaiting_input"
    tape = finished.tape
    assert tape.kinds() == [
        "user",
        "reasoning",
        "tool_call",
        "tool_call",
        "tool_result",
        "tool_result",
        "assistant",
    ]
    assert [s.content for s in tape.steps[4:6]] == ["11", "12"]  # type: ignore[attr-defined]
    assert [s.kind for s in node.parse(whole)] == ["reasoning", "tool_call", "tool_call"]
    messages = second["messages"]
    validate_chat(messages, second["tools"])
    assert messages[1]["content"] == "Let me check."
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_1", "call_2"]
    assert [(m["role"], m["content"]) for m in messages[2:]] == [("tool", "11"), ("tool", "12")]
