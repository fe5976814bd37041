"""A deterministic agent for the durability tests, runnable as a separate process:

python -m tests.store.crash_agent DB_URL TAPE_ID [N_TOOL_CALLS]
"""

from __future__ import annotations

import json
import sys
import time

from tapeagents import Agent, FinalAnswer, LLMNode, Tape, ToolEnvironment, UserMessage, run_sync
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.store import TapeStore


def work(i: int) -> str:
    """Do unit of work number i."""
    time.sleep(0.01)
    return f"done {i}"


def make(n_calls: int = 100) -> tuple[Agent, ToolEnvironment]:
    def answer(prompt: Prompt) -> LLMOutput:
        done = sum(1 for m in prompt.messages if m["role"] == "tool")
        if done < n_calls:
            return LLMOutput(tool_calls=[tool_call("work", json.dumps({"i": done}), id=f"c{done}")])
        return LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "all done"}', id="f")])

    env = ToolEnvironment([work])
    node = LLMNode(tools=env.tools, steps=[FinalAnswer])
    return Agent("worker", nodes=[node], llms=ScriptedLLM(answer)), env


def main() -> None:
    url, tape_id = sys.argv[1], sys.argv[2]
    n_calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    agent, env = make(n_calls)
    store = TapeStore(url)
    run_sync(
        agent,
        Tape(id=tape_id, steps=[UserMessage(content="work")]),
        env,
        store=store,
        max_steps=10_000,
    )


if __name__ == "__main__":
    main()
