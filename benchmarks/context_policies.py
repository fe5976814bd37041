"""Context policies: the time to cut a long conversation to an 8,192-token window.

The conversation is a task and N ReAct units: an assistant message with a short thought and one
tool call, answered by a tool message of about 1,500 characters (distinct texts). With N = 100
(about 55,000 tokens) and N = 10,000 (about 5.5 million) neither fits the window, so every
policy cuts. The goal: a policy's `fit` at 10,000 units within 2x of its time at 100, because
it walks from the newest unit back and stops once the budget is spent.

    PYTHONPATH=. .venv/bin/python benchmarks/context_policies.py             # estimate counter
    PYTHONPATH=. .venv/bin/python benchmarks/context_policies.py --litellm   # + gpt-4o-mini's

Figures: the median of `--runs` runs (in milliseconds) of `policy.fit` with a fresh count
cache each run, and, for contrast, of counting the whole conversation (`LLM.count_tokens`),
which is what a policy that measured everything first would pay. `FailOnOverflow` raises on
both sizes; its error counts everything to name the size, so its time grows with N by design.
Building the units from a tape is the caller's cost and is not included.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from tapeagents.context import (
    ContextOverflow,
    ContextPolicy,
    ElideObservations,
    FailOnOverflow,
    KeepLast,
    Unit,
    units_from_messages,
)
from tapeagents.llms import LLM, ScriptedLLM

WINDOW = 8192
RESERVE = 1024
SIZES = (100, 10_000)


def conversation(units: int) -> list[dict[str, Any]]:
    """A system message, the task, then `units` tool calls each answered by a tool result."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful research agent. Use the tools."},
        {"role": "user", "content": "Find the population of every city on the list."},
    ]
    for i in range(units):
        call_id = f"call_{i:05d}"
        messages.append(
            {
                "role": "assistant",
                "content": f"Step {i}: I will read page {i} next.",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "read_page", "arguments": json.dumps({"page": i})},
                    }
                ],
            }
        )
        body = " ".join(words[(i + k) % len(words)] for k in range(240))
        messages.append({"role": "tool", "tool_call_id": call_id, "content": f"Page {i}: {body}"})
    return messages


def median_ms(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def fit_once(
    policy: ContextPolicy, head: list[dict[str, Any]], units: list[Unit], llm: LLM
) -> None:
    try:
        policy.fit(head, units, budget=WINDOW - RESERVE, count=llm.count_message_tokens)
    except ContextOverflow:
        pass


def measure(llm: LLM, label: str, runs: int) -> None:
    policies: list[tuple[str, ContextPolicy]] = [
        ("ElideObservations()", ElideObservations()),
        ("KeepLast(8)", KeepLast(8)),
        ("FailOnOverflow() (raises)", FailOnOverflow()),
    ]
    data = {size: units_from_messages(conversation(size)) for size in SIZES}
    rows: list[tuple[str, float, float]] = []
    for name, policy in policies:
        fit_once(policy, *data[SIZES[0]], llm)  # warm up (litellm loads its tokenizer)
        small, large = (
            median_ms(functools.partial(fit_once, policy, *data[size], llm), runs) for size in SIZES
        )
        rows.append((name, small, large))
    full = {size: conversation(size) for size in SIZES}
    count_runs = max(1, runs // 10)
    small, large = (
        median_ms(functools.partial(llm.count_tokens, full[size]), count_runs) for size in SIZES
    )
    rows.append(("count the whole conversation", small, large))

    print(f"\ncounter: {label}; window {WINDOW:,}, budget {WINDOW - RESERVE:,}; median of {runs}")
    print(f"{'':34} {'100 units':>12} {'10,000 units':>14} {'ratio':>8}")
    for name, small, large in rows:
        print(f"{name:34} {small:10.3f}ms {large:12.3f}ms {large / small:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--litellm", action="store_true", help="also count with gpt-4o-mini's")
    args = parser.parse_args()
    measure(ScriptedLLM(["unused"], context_window=WINDOW), "estimate (3 bytes a token)", args.runs)
    if args.litellm:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from tapeagents.llms import LiteLLM

        measure(LiteLLM("gpt-4o-mini"), "litellm.token_counter, gpt-4o-mini", args.runs)


if __name__ == "__main__":
    main()
