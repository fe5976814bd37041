"""A deterministic agent for the durability tests, runnable as a separate process:

python -m tests.store.crash_agent DB_URL TAPE_ID [N_TOOL_CALLS] [MODE]

MODE says what each model answer holds and how it is stored:
- "calls" (the default): one tool call per answer;
- "answers": a thought and a tool call per answer (two steps from one LLM output);
- "answers-behind": the same, run with `write_behind=True`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from tapeagents import (
    Agent,
    FinalAnswer,
    Finished,
    LLMNode,
    Reasoning,
    Tape,
    ToolEnvironment,
    UserMessage,
    run,
    run_sync,
)
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.store import TapeStore

MODES = ("calls", "answers", "answers-behind")


def work(i: int) -> str:
    """Do unit of work number i."""
    time.sleep(0.01)
    return f"done {i}"


def make(n_calls: int = 100, mode: str = "calls") -> tuple[Agent, ToolEnvironment]:
    thoughts = mode != "calls"

    def answer(prompt: Prompt) -> LLMOutput:
        done = sum(1 for m in prompt.messages if m["role"] == "tool")
        if done < n_calls:
            return LLMOutput(
                content=f"Unit {done} is next." if thoughts else None,
                tool_calls=[tool_call("work", json.dumps({"i": done}), id=f"c{done}")],
            )
        return LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "all done"}', id="f")])

    env = ToolEnvironment([work])
    node = LLMNode(tools=env.tools, steps=[FinalAnswer], text_step=Reasoning if thoughts else None)
    return Agent("worker", nodes=[node], llms=ScriptedLLM(answer)), env


def main() -> None:
    url, tape_id = sys.argv[1], sys.argv[2]
    n_calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    mode = sys.argv[4] if len(sys.argv) > 4 else "calls"
    assert mode in MODES, f"MODE is one of {MODES}"
    agent, env = make(n_calls, mode)
    store = TapeStore(url)
    tape = Tape(id=tape_id, steps=[UserMessage(content="work")])
    if mode == "answers-behind":

        async def behind() -> None:
            async for event in run(
                agent, tape, env, store=store, max_steps=10_000, write_behind=True
            ):
                if isinstance(event, Finished):
                    return

        asyncio.run(behind())
    else:
        run_sync(agent, tape, env, store=store, max_steps=10_000)


if __name__ == "__main__":
    main()
