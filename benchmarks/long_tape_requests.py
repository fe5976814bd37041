"""The time an `LLMNode` takes to build its request from a long tape, against a short one.

A ReAct session: a task, then N steps alternating a tool call and a result of about 700
characters. The node's model has an 8,192-token window, so from a few dozen steps on the
default policy (`ElideObservations`) cuts the prompt. Three figures per tape length:

- cold: the first request on the tape (the node renders all of it once);
- warm: the request after the run appended one more call and its result (the run loop's case:
  the node renders only the new steps, and the policy reads only what it keeps);
- no window: warm, on a model whose window is unknown (no policy, the whole tape is sent).

The goal (issue #15): warm at 10,000 steps within 2x of warm at 100 steps.

    PYTHONPATH=. .venv/bin/python benchmarks/long_tape_requests.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from tapeagents import Agent, AssistantMessage, LLMNode, Tape, ToolCall, ToolResult, UserMessage
from tapeagents.environment import ToolEnvironment
from tapeagents.llms import ScriptedLLM
from tapeagents.steps import StepMetadata

RUNS = 15


def read(page: int) -> str:
    """Read a page of the manual."""
    return str(page)


def add_page(tape: Tape[Any, Any], page: int) -> None:
    meta = StepMetadata(agent="reader", node="main", llm_call_id=f"llm{page}")
    call = ToolCall(name="read", arguments={"page": page}, call_id=f"c{page}", metadata=meta)
    tape.append(call)
    body = f"Page {page}: " + "the manual explains the machine in detail. " * 16
    tape.append(
        ToolResult(name="read", call_id=call.call_id, content=body, action_id=call.metadata.id)
    )


def median_ms(make: Callable[[], Callable[[], object]]) -> float:
    """Median over RUNS of timing the callable that `make` prepares (untimed)."""
    times = []
    for _ in range(RUNS):
        timed = make()
        start = time.perf_counter()
        timed()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def figures(steps: int, window: int | None) -> tuple[float, float]:
    """(cold, warm) milliseconds for a tape of `steps` steps."""
    tools = ToolEnvironment([read]).tools
    pages = steps // 2

    def cold() -> Callable[[], object]:
        node = LLMNode("main", steps=[AssistantMessage], tools=tools)
        agent = Agent("reader", nodes=[node], llms=ScriptedLLM([], context_window=window))
        tape = Tape(steps=[UserMessage(content="Summarize the manual.")])
        for page in range(pages):
            add_page(tape, page)
        return lambda: node.make_prompt(agent, tape)

    node = LLMNode("main", steps=[AssistantMessage], tools=tools)
    agent = Agent("reader", nodes=[node], llms=ScriptedLLM([], context_window=window))
    tape = Tape(steps=[UserMessage(content="Summarize the manual.")])
    for page in range(pages):
        add_page(tape, page)
    node.make_prompt(agent, tape)
    grown = [pages]

    def warm() -> Callable[[], object]:
        add_page(tape, grown[0])
        grown[0] += 1
        return lambda: node.make_prompt(agent, tape)

    return median_ms(cold), median_ms(warm)


def main() -> None:
    print(f"{'steps':>7} | {'cold ms':>8} | {'warm ms':>8} | {'no window, warm ms':>18}")
    rows = {}
    for steps in (100, 1_000, 10_000):
        cold, warm = figures(steps, 8_192)
        _, unlimited = figures(steps, None)
        rows[steps] = warm
        print(f"{steps:>7,} | {cold:>8.2f} | {warm:>8.2f} | {unlimited:>18.2f}")
    print(f"warm 10,000 / warm 100: {rows[10_000] / rows[100]:.2f}x (goal: within 2x)")


if __name__ == "__main__":
    main()
