"""The toy task of the fine-tuning tests: small sums, answered in the agent's JSON format.

A scripted teacher answers every question right; the student is the local model. Questions are
split by their numbers, so the held-out questions are never seen in training.
"""

from __future__ import annotations

import json
import random
import re

from tapeagents import Agent, FinalAnswer, LLMNode, Tape, TapeMetadata, UserMessage, run_sync
from tapeagents.llms import LLM, Prompt, ScriptedLLM
from tapeagents.store import TapeStore

SYSTEM = "You add two numbers."


def arith_agent(llm: LLM | str) -> Agent:
    return Agent(
        "arith",
        nodes=[LLMNode(system_prompt=SYSTEM, steps=[FinalAnswer], mode="json")],
        llms=llm,
    )


def teacher_answer(prompt: Prompt) -> str:
    a, b = (int(n) for n in re.findall(r"\d+", prompt.messages[-1]["content"]))
    return json.dumps([{"kind": "final_answer", "answer": str(a + b)}])


def questions(seed: int = 0) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training, held-out) pairs of single-digit numbers."""
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    random.Random(seed).shuffle(pairs)
    return pairs[:60], pairs[60:72]


def ask(a: int, b: int) -> Tape:
    return Tape(
        steps=[UserMessage(content=f"What is {a} + {b}?")],
        metadata=TapeMetadata(task_id=f"{a}+{b}"),
    )


def record_teacher(store: TapeStore, pairs: list[tuple[int, int]]) -> None:
    teacher = arith_agent(ScriptedLLM(teacher_answer))
    for a, b in pairs:
        tape = run_sync(teacher, ask(a, b), store=store).tape
        tape.metadata.outcome = "success"
        tape.metadata.reward = 1.0
        store.set_status(tape.id, "stopped", metadata=tape.metadata)


def score(llm: LLM, pairs: list[tuple[int, int]]) -> tuple[float, float]:
    """(share of well-formed answers, share of right answers) of the agent on `pairs`."""
    agent = arith_agent(llm)
    formed = right = 0
    for a, b in pairs:
        tape = run_sync(agent, ask(a, b), max_errors=1).tape
        answer = tape.last
        if isinstance(answer, FinalAnswer):
            formed += 1
            right += answer.answer.strip() == str(a + b)
    return formed / len(pairs), right / len(pairs)
