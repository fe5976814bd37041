"""Record the sessions that `tests/test_recorded.py` replays: `python -m tests.data.record`.

The hello example agent runs a few sessions with scripted and test models and its tapes, with
the LLM calls behind them, go into `tests/data/recorded.db`. The suite replays every tape with
the current code (`assert_replays`); a change in what the agent asks the model, or in how it
reads the answers, shows up there as a replay diff. Regenerate after an intended change, and
look at `git diff --stat` to see that only this file changed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from examples.hello.agent import make_agent
from tapeagents import Tape, UserMessage, run_sync
from tapeagents.llms import LLMOutput, ScriptedLLM, TestLLM, tool_call
from tapeagents.store import TapeStore

__all__ = ["RECORDED", "record"]

RECORDED = Path(__file__).with_name("recorded.db")
"""The committed store of recorded sessions."""


def calculate(expression: str) -> list[LLMOutput | str]:
    """A scripted model's answer: call the calculator (the agent's answer node states the
    result without the model)."""
    call = tool_call(
        "calculator", f'{{"expression": "{expression}"}}', id=f"call_{len(expression)}"
    )
    return [LLMOutput(tool_calls=[call])]


def record(path: Path = RECORDED) -> list[str]:
    """Run the sessions into a fresh store at `path`; return the ids of their tapes."""
    path.unlink(missing_ok=True)
    store = TapeStore(f"sqlite:///{path}")
    ids = []
    try:
        # A question answered with the tool, then a follow-up on the same tape.
        agent, env = make_agent(ScriptedLLM(calculate("12 * 7") + calculate("84 / 4")))
        tape = Tape(id="hello-calculator", steps=[UserMessage(content="What is 12 times 7?")])
        result = run_sync(agent, tape, env, max_steps=10, store=store)
        result.tape.append(UserMessage(content="And that divided by 4?"))
        ids.append(run_sync(agent, result.tape, env, max_steps=10, store=store).tape.id)

        # A plain answer, no tool.
        agent, env = make_agent(ScriptedLLM(["Hello! Ask me any arithmetic question."]))
        tape = Tape(id="hello-chat", steps=[UserMessage(content="Hi!")])
        ids.append(run_sync(agent, tape, env, max_steps=10, store=store).tape.id)

        # The test model tries the tool with schema-valid arguments (the tool reports an error).
        agent, env = make_agent(TestLLM(text="I tried the calculator."))
        tape = Tape(id="hello-test-llm", steps=[UserMessage(content="Use your tool.")])
        ids.append(run_sync(agent, tape, env, max_steps=10, store=store).tape.id)
    finally:
        store.close()
    with sqlite3.connect(path) as connection:  # keep the committed file small
        connection.execute("VACUUM")
    return ids


if __name__ == "__main__":
    tape_ids = record()
    print(f"Recorded {len(tape_ids)} tapes into {RECORDED} ({RECORDED.stat().st_size} bytes).")
