"""Agents that make the tapes the export tests read, and students that re-render them."""

from __future__ import annotations

import json
import re
from typing import Literal

from tapeagents import (
    Agent,
    AssistantMessage,
    FinalAnswer,
    LLMNode,
    Respond,
    SetNextNode,
    Tape,
    TapeMetadata,
    Thought,
    ToolEnvironment,
    UserMessage,
    run_sync,
)
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.store import TapeStore


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def calc_env() -> ToolEnvironment:
    return ToolEnvironment([add])


def _numbers(prompt: Prompt) -> tuple[int, int]:
    question = next(m["content"] for m in prompt.messages if m["role"] == "user")
    a, b = (int(n) for n in re.findall(r"\d+", question)[:2])
    return a, b


def calc_answers(prompt: Prompt) -> LLMOutput:
    """Thinks aloud and calls `add` for the question, then answers with the tool's result."""
    last = prompt.messages[-1]
    if last["role"] == "user":
        a, b = _numbers(prompt)
        arguments = json.dumps({"a": a, "b": b})
        return LLMOutput(content=f"I add {a} and {b}.", tool_calls=[tool_call("add", arguments)])
    answer = json.dumps({"answer": str(last["content"])})
    return LLMOutput(tool_calls=[tool_call("final_answer", answer)])


def calc_agent(name: str = "calc", system_prompt: str = "Add the numbers.") -> Agent:
    """Tool calling: text and a tool call in one answer, then a final answer as a tool call."""
    return Agent(
        name,
        nodes=[
            LLMNode(
                system_prompt=system_prompt,
                steps=[FinalAnswer],
                tools=calc_env().tools,
            )
        ],
        llms=ScriptedLLM(calc_answers),
    )


def json_answers(prompt: Prompt) -> str:
    a, b = _numbers(prompt)
    return json.dumps([{"kind": "final_answer", "answer": str(a + b)}])


def json_agent(name: str = "arith", system_prompt: str = "Answer the question.") -> Agent:
    """JSON mode: the answer is a JSON list of steps in the text."""
    return Agent(
        name,
        nodes=[LLMNode(system_prompt=system_prompt, steps=[FinalAnswer], mode="json")],
        llms=ScriptedLLM(json_answers),
    )


class Plan(Thought):
    """A plan of the steps to take."""

    kind: Literal["export_test_plan"] = "export_test_plan"
    steps: list[str]


PLANNER_PROMPT = (
    "Plan how to answer. The question is {{ context }}; the tape has {{ tape | length }} steps."
)


def planner_answers(prompt: Prompt) -> LLMOutput:
    if "Plan how" in prompt.messages[0]["content"]:
        plan = json.dumps({"steps": ["add", "answer"]})
        return LLMOutput(tool_calls=[tool_call("export_test_plan", plan)])
    return LLMOutput(content="The sum is 5.")


def planner_agent(name: str = "planner") -> Agent:
    """Two nodes: a planner whose system prompt renders the tape, and an answerer."""
    return Agent(
        name,
        nodes=[
            LLMNode("plan", system_prompt=PLANNER_PROMPT, steps=[Plan]),
            LLMNode("answer", system_prompt="Answer using the plan.", steps=[AssistantMessage]),
        ],
        llms=ScriptedLLM(planner_answers),
    )


def boss_answers(prompt: Prompt) -> LLMOutput:
    system = prompt.messages[0]["content"]
    if system.startswith("You delegate"):
        if prompt.messages[-1]["role"] == "user":
            call = tool_call("call", '{"agent_name": "helper", "content": "go"}')
            return LLMOutput(tool_calls=[call])
        return LLMOutput(content="Done: 5.")
    return LLMOutput(tool_calls=[tool_call("respond", '{"content": "5"}')])


def boss_agent() -> Agent:
    """A root that calls a subagent, which responds."""
    from tapeagents import Call

    helper = Agent(
        "helper",
        nodes=[LLMNode(system_prompt="You help.", steps=[Respond])],
        llms=ScriptedLLM(boss_answers),
    )
    return Agent(
        "boss",
        nodes=[LLMNode(system_prompt="You delegate.", steps=[Call, AssistantMessage, SetNextNode])],
        subagents=[helper],
        llms=ScriptedLLM(boss_answers),
    )


def question(a: int, b: int, *, task: str | None = None, tags: list[str] | None = None) -> Tape:
    metadata = TapeMetadata(task_id=task or f"{a}+{b}", tags=tags or [])
    return Tape(steps=[UserMessage(content=f"What is {a} + {b}?")], metadata=metadata)


def solve(store: TapeStore | None, agent: Agent, a: int, b: int, **kwargs: object) -> Tape:
    """Run `agent` on "What is a + b?" with the calculator and record how it went."""
    tape = question(a, b, **kwargs)  # type: ignore[arg-type]
    result = run_sync(agent, tape, calc_env(), store=store)
    answer = result.tape.last
    correct = isinstance(answer, FinalAnswer) and answer.answer == str(a + b)
    tape.metadata.outcome = "success" if correct else "failure"
    tape.metadata.reward = 1.0 if correct else 0.0
    if store is not None:
        store.set_status(tape.id, result.reason, metadata=tape.metadata)
    return result.tape
