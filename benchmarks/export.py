"""Export throughput: stored tapes per second into chat JSONL and into token-level examples.

The store holds N tapes of 20 steps made by a tool-using agent: a user question, nine tool calls
each answered by a tool result (a distinct ~200-character text), and a final answer; so each
tape has ten model outputs, hence ten training examples. The agent's system prompt is a jinja2
template over the tape's context, rendered for every example as in a real export.

    PYTHONPATH=. .venv/bin/python benchmarks/export.py                # 10,000 tapes
    PYTHONPATH=. .venv/bin/python benchmarks/export.py --tapes 1000   # quicker
    PYTHONPATH=. .venv/bin/python benchmarks/export.py --profile      # + cProfile of JSONL
    PYTHONPATH=. .venv/bin/python benchmarks/export.py --workers 2 4  # worker processes

Figures: tapes/s by wall-clock time and by CPU time (of this process and of its worker
processes: the machine is shared, and CPU time is what the export itself costs), CPU ms per tape,
median of `--runs` runs. The store is built once and kept under `--db` (default: a file in the
temp directory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tapeagents import Agent, FinalAnswer, LLMNode, Tape, TapeMetadata, ToolEnvironment
from tapeagents.export import (
    ExportReport,
    export_chat_jsonl,
    token_examples,
    training_examples,
    write_chat_jsonl,
    write_token_jsonl,
)
from tapeagents.llms import ScriptedLLM
from tapeagents.steps import StepMetadata, ToolCall, ToolResult, UserMessage
from tapeagents.store import TapeStore

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be "
    "or has had not but their one all its they been have more who also new after first time "
    "two would other into some there can only most when over up years may such these out him "
    "city state world between used three about under during many later being before people"
).split()
VERSION = "1"  # bump when the workload changes, so an old cached store is not reused


def lookup(key: str) -> str:
    """Look up a fact about `key`."""
    return key


def build_agent() -> Agent:
    env = ToolEnvironment([lookup])
    node = LLMNode(
        system_prompt="You answer questions with the lookup tool. Question: {{ context }}",
        steps=[FinalAnswer],
        tools=env.tools,
    )
    return Agent("researcher", nodes=[node], llms=ScriptedLLM(["unused"]))


def make_tape(rng: random.Random, index: int, steps: int) -> Tape:
    """A tape as the researcher agent writes it (metadata stamped as a run stamps it)."""
    tape: Tape = Tape(
        context=f"question {index}",
        metadata=TapeMetadata(task_id=f"task-{index % 500}", outcome="success", reward=1.0),
    )
    tape.append(UserMessage(content=f"Question {index}: {' '.join(rng.choices(WORDS, k=12))}"))
    for turn in range((steps - 2) // 2):
        call_id = f"call-{index}-{turn}"
        action = ToolCall(
            name="lookup",
            arguments={"key": " ".join(rng.choices(WORDS, k=3))},
            metadata=StepMetadata(agent="researcher", node="main", llm_call_id=call_id),
        )
        tape.append(action)
        text = f"Result {turn}: " + " ".join(rng.choices(WORDS, k=36))
        tape.append(
            ToolResult(
                name="lookup", call_id=action.call_id, content=text, action_id=action.metadata.id
            )
        )
    tape.append(
        FinalAnswer(
            answer=" ".join(rng.choices(WORDS, k=8)),
            metadata=StepMetadata(agent="researcher", node="main", llm_call_id=f"final-{index}"),
        )
    )
    return tape


def build_store(path: Path, tapes: int, steps: int) -> TapeStore:
    marker = path.with_suffix(".json")
    wanted = {"version": VERSION, "tapes": tapes, "steps": steps}
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
        return TapeStore(f"sqlite:///{path}")
    for stale in (path, marker, Path(f"{path}-wal"), Path(f"{path}-shm")):
        stale.unlink(missing_ok=True)
    store = TapeStore(f"sqlite:///{path}")
    rng = random.Random(0)
    start = time.perf_counter()
    for index in range(tapes):
        store.save(make_tape(rng, index, steps), status="stopped", agent="researcher")
    print(f"built {tapes} tapes of {steps} steps in {time.perf_counter() - start:.1f} s")
    marker.write_text(json.dumps(wanted))
    return store


def cpu_time() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def measure(label: str, runs: int, tapes: int, work: Callable[[], ExportReport]) -> None:
    walls, cpus = [], []
    report = ExportReport()
    for _ in range(runs):
        wall, cpu = time.perf_counter(), cpu_time()
        report = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(cpu_time() - cpu)
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    print(
        f"{label}: {tapes / wall:,.0f} tapes/s wall ({wall:.2f} s), {tapes / cpu:,.0f} tapes/s "
        f"CPU ({cpu:.2f} s, {cpu / tapes * 1e3:.3f} ms a tape); {report.examples:,} examples"
        + (f", {report.tokens:,} tokens" if report.tokens else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tapes", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--token-runs", type=int, default=1)
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "bench-export.db")
    parser.add_argument("--no-tokens", action="store_true", help="skip the token-level export")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[2], help="worker counts for chat JSONL"
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    store = build_store(args.db, args.tapes, args.steps)
    agent = build_agent()
    out = Path(tempfile.mkdtemp(prefix="bench-export-"))

    def chat() -> ExportReport:
        report = ExportReport()
        write_chat_jsonl(training_examples(store, agent, report=report), out / "chat.jsonl")
        return report

    def chat_no_dedupe() -> ExportReport:
        report = ExportReport()
        examples = training_examples(store, agent, dedupe=False, report=report)
        write_chat_jsonl(examples, out / "chat.jsonl")
        return report

    def chat_workers(workers: int) -> Callable[[], ExportReport]:
        return lambda: export_chat_jsonl(store, agent, out / "chat.jsonl", workers=workers)

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.tapes:,} tapes of {args.steps} steps; median of {args.runs} runs; load {load}")
    measure("chat JSONL", args.runs, args.tapes, chat)
    size = (out / "chat.jsonl").stat().st_size
    print(f"  {size / 1e6:.1f} MB written")
    measure("chat JSONL, no dedupe", args.runs, args.tapes, chat_no_dedupe)
    for workers in args.workers:
        measure(f"chat JSONL, {workers} workers", args.runs, args.tapes, chat_workers(workers))

    if not args.no_tokens:
        from tapeagents.llms.local import LocalLLM

        llm = LocalLLM()
        llm.tokenizer  # noqa: B018 - load the tokenizer outside the measurement

        def tokens() -> ExportReport:
            report = ExportReport()
            examples = training_examples(store, agent, report=report)
            write_token_jsonl(token_examples(examples, llm, report=report), out / "tokens.jsonl")
            return report

        measure("token-level JSONL (SmolLM2 tokenizer)", args.token_runs, args.tapes, tokens)

    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("chat()", globals(), {"chat": chat}, str(out / "profile"))
        pstats.Stats(str(out / "profile")).sort_stats("tottime").print_stats(25)
    store.close()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load}")


if __name__ == "__main__":
    main()
