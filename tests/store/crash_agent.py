"""A deterministic agent for the durability tests, runnable as a separate process:

python -m tests.store.crash_agent DB_URL TAPE_ID [N_TOOL_CALLS] [MODE]

MODE says what each model answer holds and how it is stored:
- "calls" (the default): one tool call per answer;
- "answers": a thought and a tool call per answer (two steps from one LLM output);
- "answers-behind": the same, run with `write_behind=True`;
- "batch": `BATCH_TASKS` tasks of the "answers" agent, `BATCH_CONCURRENCY` at a time, through
  `run_batch_sync` with TAPE_ID as the batch id (a batch always writes behind).

Every step the run reports (a `StepAppended` event) is printed to stdout at once, flushed, as
one JSON line: `[tape_id, index, kind, step id, llm_call_id]`. What a killed process printed is
what it had reported, and the tests check it against the store. The batch API has no event
hook, so in "batch" mode the child wraps the `run` that the batch runner calls: it sees every
event the batch sees, just before the batch does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from tapeagents import (
    Agent,
    FinalAnswer,
    Finished,
    LLMNode,
    Reasoning,
    StepAppended,
    Tape,
    ToolEnvironment,
    UserMessage,
    run,
)
from tapeagents.batch import BatchOptions, BatchSummary, run_batch_sync
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.orchestrator import Event
from tapeagents.store import TapeStore

MODES = ("calls", "answers", "answers-behind", "batch")
BATCH_TASKS = 6
BATCH_CONCURRENCY = 3


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


def batch_tasks() -> list[dict[str, Any]]:
    """The tasks of the "batch" mode: each its own tape, told which task it is."""
    return [{"id": f"task-{k}", "message": f"work on task {k}"} for k in range(BATCH_TASKS)]


def run_batch_mode(store: TapeStore | None, batch_id: str, n_calls: int) -> BatchSummary:
    """Run the batch (or resume it: the same batch id continues interrupted tapes)."""
    agent, _ = make(n_calls, "answers")
    options = BatchOptions(concurrency=BATCH_CONCURRENCY, batch_id=batch_id, max_steps=10_000)
    return run_batch_sync(
        agent,
        batch_tasks(),
        store=store,
        env_factory=lambda task: make(n_calls, "answers")[1],
        options=options,
    )


def report(tape_id: str, event: StepAppended) -> None:
    """Print a reported step, flushed: from now on the observer knows about it."""
    step = event.step
    line = [tape_id, event.index, step.kind, step.metadata.id, step.metadata.llm_call_id]
    print(json.dumps(line), flush=True)


def main() -> None:
    url, tape_id = sys.argv[1], sys.argv[2]
    n_calls = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    mode = sys.argv[4] if len(sys.argv) > 4 else "calls"
    assert mode in MODES, f"MODE is one of {MODES}"
    store = TapeStore(url)
    if mode == "batch":
        import tapeagents.batch.runner as runner

        async def reporting_run(
            agent: Agent, tape: Tape[Any, Any], *args: Any, **kwargs: Any
        ) -> AsyncIterator[Event]:
            async for event in run(agent, tape, *args, **kwargs):
                if isinstance(event, StepAppended):
                    report(tape.id, event)
                yield event

        runner.run = reporting_run  # type: ignore[attr-defined,assignment]
        run_batch_mode(store, tape_id, n_calls)
        return
    agent, env = make(n_calls, mode)
    tape: Tape[Any, Any] = Tape(id=tape_id, steps=[UserMessage(content="work")])

    async def drain() -> None:
        events = run(
            agent,
            tape,
            env,
            store=store,
            max_steps=10_000,
            write_behind=mode == "answers-behind",
        )
        async for event in events:
            if isinstance(event, StepAppended):
                report(tape_id, event)
            elif isinstance(event, Finished):
                return

    asyncio.run(drain())


if __name__ == "__main__":
    main()
