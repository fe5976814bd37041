"""Agents and environments for the batch tests; the CLI and Ray workers load them by path."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tapeagents import Agent, FinalAnswer, LLMNode, Reasoning, ToolEnvironment
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call


def _last_user(prompt: Prompt) -> str:
    for message in reversed(prompt.messages):
        if message["role"] == "user":
            return str(message["content"])
    return ""


def _first_user(prompt: Prompt) -> str:
    for message in prompt.messages:
        if message["role"] == "user":
            return str(message["content"])
    return ""


def answer(prompt: Prompt) -> str:
    """Echoes the task's message; "boom" raises (a bug in the agent); "die <marker>" kills the
    process the first time (a dying Ray worker), leaving the marker file behind."""
    text = _last_user(prompt)
    if text == "boom":
        raise RuntimeError("the agent blew up on purpose")
    if text.startswith("die "):
        marker = Path(text.split(" ", 1)[1])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)
    return f"done: {text}"


def steps_agent(steps: int = 3) -> Agent:
    """`steps` LLM calls per task: thoughts, then a final answer (the tape ends "stopped")."""
    nodes = [LLMNode(f"think{i}", steps=[Reasoning], text_step=Reasoning) for i in range(steps - 1)]
    nodes.append(LLMNode("answer", steps=[FinalAnswer], text_step=FinalAnswer))
    return Agent("steps", nodes=nodes, llms=ScriptedLLM(answer))


def three_steps() -> Agent:
    return steps_agent(3)


class SlowLLM(ScriptedLLM):
    """Answers after `delay` seconds (five times that for tasks whose message says "slow") and
    counts the requests started and how many are in flight at once."""

    def __init__(self, delay: float) -> None:
        super().__init__(answer)
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = 0

    async def generate(self, prompt: Prompt) -> LLMOutput:
        self.started += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            slow = "slow" in _first_user(prompt)
            await asyncio.sleep(self.delay * (5 if slow else 1))
            return await super().generate(prompt)
        finally:
            self.in_flight -= 1


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def calc_env() -> ToolEnvironment:
    return ToolEnvironment([add])


def _calc_answers(prompt: Prompt) -> LLMOutput:
    if prompt.messages[-1]["role"] == "user":
        return LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')])
    return LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')])


def calc_agent() -> Agent:
    """Calls `add` once, then answers: needs an environment (--env tests.batch.agents:calc_env)."""
    return Agent(
        "calc",
        nodes=[LLMNode(steps=[FinalAnswer], tools=calc_env().tools)],
        llms=ScriptedLLM(_calc_answers),
    )


def slow_agent() -> Agent:
    """Two calls per task, 0.5 s each for "slow" messages: slow enough to interrupt."""
    return Agent("slow", nodes=steps_agent(2).nodes, llms=SlowLLM(0.1))


def database_dropping_agent() -> Agent:
    """Drops the PostgreSQL database named by $TAPEAGENTS_TEST_DROP_URL on its tenth call: the
    store disappears mid-batch."""
    import sqlalchemy as sa

    url = os.environ["TAPEAGENTS_TEST_DROP_URL"]
    calls = {"n": 0}

    def drop_on_tenth_call(prompt: Prompt) -> str:
        calls["n"] += 1
        if calls["n"] == 10:
            admin = sa.create_engine(
                url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
            )
            with admin.connect() as connection:
                name = url.rsplit("/", 1)[1]
                connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
        return answer(prompt)

    return Agent("gone", nodes=steps_agent(3).nodes, llms=ScriptedLLM(drop_on_tenth_call))


def env_for_task(task: dict[str, object]) -> ToolEnvironment:
    """A per-task environment factory that reads the task (the CLI passes it)."""
    assert "id" in task
    return calc_env()
