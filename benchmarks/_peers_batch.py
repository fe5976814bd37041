"""Peer workload for `batch.py`; run ONLY with the bench venv's Python.

    .bench-venv/bin/python -I benchmarks/_peers_batch.py PORT TASKS THREADS

The original TapeAgents 0.1.16's batch loop (`tapeagents.batch.batch_main_loop`: a thread pool,
16 threads by default) runs the same workload as ours against the same stub server: each task
is a dialog tape with one user message, and an agent of five nodes, each making one LLM call
through 0.1.16's `LiteLLM` (litellm's `completion`, pointed at the stub with the `openai/`
provider and `api_base`); the first four nodes write a thought, the last the answer (a stop
step). 0.1.16 records every LLM call in its SQLite database (`tapedata.sqlite` in the working
directory, its default); it has no tape store.

Prints one JSON object: {"framework", "version", "threads", "tasks", "calls", "seconds",
"cpu_seconds", "peak_rss_mb", "base_rss_mb", "errors"}.
"""

import json
import os
import resource
import sys
import threading
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    port, n_tasks, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    from importlib.metadata import version

    from tapeagents.core import Prompt
    from tapeagents.dialog_tape import AssistantAnswer, AssistantThought, DialogTape, UserStep

    import tapeagents
    from tapeagents.agent import Agent, Node
    from tapeagents.batch import batch_main_loop
    from tapeagents.environment import EmptyEnvironment
    from tapeagents.llms import LiteLLM

    assert "site-packages" in (tapeagents.__file__ or ""), tapeagents.__file__

    class ThinkNode(Node):
        def make_prompt(self, agent, tape) -> Prompt:
            messages = [{"role": "system", "content": "Think about the task."}]
            for step in tape.steps:
                text = getattr(step, "content", None) or getattr(step, "answer", "")
                messages.append(
                    {"role": "user" if step.kind == "user" else "assistant", "content": text}
                )
            return Prompt(messages=messages)

        def generate_steps(self, agent, tape, llm_stream):
            yield AssistantThought(content=llm_stream.get_text())

    class AnswerNode(ThinkNode):
        def generate_steps(self, agent, tape, llm_stream):
            yield AssistantAnswer(success=True, answer=llm_stream.get_text())

    llm = LiteLLM(
        model_name="openai/stub",
        parameters={"api_base": f"http://127.0.0.1:{port}/v1", "api_key": "sk-stub"},
        use_cache=False,
        stream=False,
    )
    nodes = [ThinkNode(name=f"think{i}") for i in range(4)] + [AnswerNode(name="answer")]
    agent = Agent.create(llms=llm, nodes=nodes, name="bench")

    def tapes(n: int, prefix: str) -> list:
        return [
            DialogTape(steps=[UserStep(content=f"{prefix} task number {i}: say something.")])
            for i in range(n)
        ]

    for _ in batch_main_loop(
        agent, tapes(threads, "warm-up"), EmptyEnvironment(), n_workers=threads
    ):
        pass
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.01)

    base = _rss_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    calls = errors = 0
    for tape in batch_main_loop(
        agent, tapes(n_tasks, "measured"), EmptyEnvironment(), n_workers=threads
    ):
        if tape.metadata.error:
            errors += 1
        calls += sum(
            1 for step in tape.steps if step.kind in ("assistant_thought", "assistant_answer")
        )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    sampler.join()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(
        json.dumps(
            {
                "framework": "tapeagents-0.1.16",
                "version": version("tapeagents"),
                "threads": threads,
                "tasks": n_tasks,
                "calls": calls,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss_mb": peak[0],
                "base_rss_mb": base,
                "errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
