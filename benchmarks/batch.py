"""Batch throughput against an OpenAI-compatible server that answers every request after 100 ms.

    PYTHONPATH=. .venv/bin/python benchmarks/batch.py                 # everything (~15 min)
    PYTHONPATH=. .venv/bin/python benchmarks/batch.py --no-peers      # ours only
    PYTHONPATH=. .venv/bin/python benchmarks/batch.py --tasks 200 --no-litellm --no-postgres

Workload: 1,000 tasks; each is a tape with one user message and an agent of five `LLMNode`s
(four thoughts, then the final answer), so 5,000 LLM calls, every step stored durably as it
happens (`run_batch(..., store=...)`) in a SQLite file and in PostgreSQL. The server is
`_openai_stub.py` (a bare ASGI app under uvicorn, in its own process on 127.0.0.1), which answers
after 100 ms, so the ideal throughput is concurrency / 0.1 s calls per second.

Backends: `OpenAICompatLLM` (httpx straight to /v1/chat/completions) and `LiteLLM` (litellm
with the `openai/` provider and `api_base` pointed at the stub), at concurrency 64 and 256.
The backend alone (`OpenAICompatLLM.stream_call`, no agent, no store; 5,000 calls) shows how the
CPU time splits between the HTTP client and the framework with its store.
Each configuration runs in a fresh process (after a warm-up batch), which reports wall time,
its CPU time (user + system, all threads: the framework, the HTTP client and the store) and its
peak resident memory; memory per concurrent session is the growth of the peak from concurrency
64 to 256, divided by 192. The stub's own CPU time is reported to show it is not the limit.

Peer: the original TapeAgents 0.1.16's `batch_main_loop` (16 threads by default, and 64) with its
`LiteLLM` on the same stub (`_peers_batch.py`, run by the bench venv's Python; see README.md).

Goal: `OpenAICompatLLM` at concurrency 64 reaches at least 80% of the ideal, 512 calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent
BENCH_VENV = ROOT / ".bench-venv"
DELAY = 0.1
GOAL = 0.8


# ----------------------------------------------------------------------------- the stub


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StubServer:
    """`_openai_stub.py` in its own process; `cpu_seconds()` is its CPU time so far."""

    def __init__(self, delay: float) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_openai_stub.py"),
                "--port",
                str(self.port),
                "--delay",
                str(delay),
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise RuntimeError("the stub server did not start")

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# ----------------------------------------------------------------------------- one run


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_agent(backend: str, port: int) -> Any:
    from tapeagents import Agent, FinalAnswer, LLMNode, Reasoning

    base_url = f"http://127.0.0.1:{port}/v1"
    if backend == "openai-compat":
        from tapeagents.llms import OpenAICompatLLM

        llm: Any = OpenAICompatLLM("stub", base_url=base_url)
    else:
        from tapeagents.llms import LiteLLM

        llm = LiteLLM("openai/stub", api_base=base_url, api_key="sk-stub")
    system = "Think about the task."
    nodes = [
        LLMNode(f"think{i}", system_prompt=system, steps=[Reasoning], text_step=Reasoning)
        for i in range(4)
    ]
    nodes.append(
        LLMNode("answer", system_prompt=system, steps=[FinalAnswer], text_step=FinalAnswer)
    )
    return Agent("bench", nodes=nodes, llms=llm)


async def drain(
    agent: Any, tasks: list[dict[str, Any]], store: Any, concurrency: int, batch_id: str
) -> tuple[int, int]:
    from tapeagents.batch import BatchOptions, run_batch

    calls = errors = 0
    options = BatchOptions(concurrency=concurrency, batch_id=batch_id)
    async for result in run_batch(agent, tasks, store=store, options=options):
        result.tape = None  # keep only what a long batch keeps: the store has the tape
        calls += result.llm_calls
        errors += result.status != "stopped"
    return calls, errors


async def bare_calls(llm: Any, n: int, concurrency: int) -> tuple[int, int]:
    """`n` streamed calls of the backend alone, `concurrency` at a time: no agent, no store."""
    from tapeagents.llms import Prompt

    prompt = Prompt(
        messages=[
            {"role": "system", "content": "Think about the task."},
            {"role": "user", "content": "Task number 1: say something."},
        ]
    )
    todo = iter(range(n))

    async def one_at_a_time() -> None:
        for _ in todo:
            async for _item in llm.stream_call(prompt):
                pass

    await asyncio.gather(*(one_at_a_time() for _ in range(concurrency)))
    if hasattr(llm, "aclose"):
        await llm.aclose()
    return n, 0


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: a warm-up batch, then the measured one."""
    from tapeagents.store import TapeStore

    agent = make_agent(config["backend"], config["port"])
    concurrency = config["concurrency"]
    store = TapeStore(config["store"])
    warm = [{"id": f"w{i}", "message": f"Warm-up task {i}."} for i in range(concurrency)]
    asyncio.run(drain(agent, warm, store, concurrency, "warm-up"))
    tasks = [
        {"id": i, "message": f"Task number {i}: say something."} for i in range(config["tasks"])
    ]
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
    if config.get("bare"):
        calls, errors = asyncio.run(bare_calls(agent.llm(), 5 * len(tasks), concurrency))
    else:
        calls, errors = asyncio.run(drain(agent, tasks, store, concurrency, "measured"))
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    sampler.join()
    store.close()
    return {
        "seconds": seconds,
        "calls": calls,
        "errors": errors,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": peak[0],
        "base_rss_mb": base,
    }


def run_config(config: dict[str, Any], stub: StubServer, timeout: float) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    stub_before = stub.cpu_seconds()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stub_cpu_seconds"] = stub.cpu_seconds() - stub_before  # warm-up included
    return result


def run_peer(port: int, tasks: int, threads: int, timeout: float) -> dict[str, Any] | None:
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        return None
    with tempfile.TemporaryDirectory() as directory:  # 0.1.16 writes tapedata.sqlite here
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
        )
        done = subprocess.run(
            [str(python), "-I", str(HERE / "_peers_batch.py"), str(port), str(tasks), str(threads)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=directory,
            env=env,
        )
    if done.returncode != 0:
        raise RuntimeError(f"peer failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- stores


def _load_store_benchmark() -> Any:
    """`benchmarks/store.py`, for its private PostgreSQL cluster."""
    spec = importlib.util.spec_from_file_location("_store_benchmark", HERE / "store.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- report


def line(name: str, result: dict[str, Any], concurrency: int | None) -> str:
    rate = result["calls"] / result["seconds"]
    ideal = f" ({rate / (concurrency / DELAY):.0%} of ideal)" if concurrency else ""
    cpu = result["cpu_seconds"] / max(result["calls"], 1) * 1000
    stub = result.get("stub_cpu_seconds")
    stub_text = f", stub {stub / max(result['calls'], 1) * 1000:.2f} ms" if stub else ""
    errors = f", {result['errors']} errors" if result.get("errors") else ""
    peak, base = result["peak_rss_mb"], result["base_rss_mb"]
    return (
        f"{name:<44} {rate:7.0f} calls/s{ideal}, CPU {cpu:.2f} ms/call{stub_text}, "
        f"peak RSS {peak:.0f} MB (+{peak - base:.0f}){errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of the goal configuration")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    print(
        f"# batch benchmark: {args.tasks} tasks x 5 LLM calls, stub delay {DELAY * 1000:.0f} ms, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    directory = tempfile.mkdtemp(prefix="tapeagents-bench-batch-")
    stub = StubServer(DELAY)
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    try:
        with _stores(args, directory) as stores:
            backends = ["openai-compat"] + ([] if args.no_litellm else ["litellm"])
            for concurrency in (64, 256):  # the HTTP client alone: how CPU time splits
                config = {
                    "backend": "openai-compat",
                    "store": stores[0][1](),  # for the warm-up batch only
                    "bare": True,
                    "port": stub.port,
                    "concurrency": concurrency,
                    "tasks": args.tasks,
                }
                result = run_config(config, stub, args.timeout)
                results.setdefault(("openai-compat alone", "no store", concurrency), []).append(
                    result
                )
                name = f"OpenAICompatLLM.stream_call alone, concurrency {concurrency}"
                print(line(name, result, concurrency), flush=True)
            for backend in backends:
                for store_name, fresh_url in stores:
                    for concurrency in (64, 256):
                        repeat = (
                            args.repeat if (backend, concurrency) == ("openai-compat", 64) else 1
                        )
                        for _ in range(repeat):
                            config = {
                                "backend": backend,
                                "store": fresh_url(),
                                "port": stub.port,
                                "concurrency": concurrency,
                                "tasks": args.tasks,
                            }
                            result = run_config(config, stub, args.timeout)
                            results.setdefault((backend, store_name, concurrency), []).append(
                                result
                            )
                            print(
                                line(
                                    f"{backend}, {store_name}, concurrency {concurrency}",
                                    result,
                                    concurrency,
                                ),
                                flush=True,
                            )
        peers = []
        if not args.no_peers:
            if not (BENCH_VENV / "bin" / "python").exists():
                print("(no .bench-venv: `make bench-venv` to run TapeAgents 0.1.16 beside ours)")
            else:
                for threads in (16, 64):
                    peer = run_peer(stub.port, args.tasks, threads, args.timeout)
                    if peer is not None:
                        peers.append(peer)
                        print(
                            line(
                                f"TapeAgents 0.1.16 batch_main_loop, {threads} threads",
                                peer,
                                threads,
                            ),
                            flush=True,
                        )
    finally:
        stub.close()
        shutil.rmtree(directory, ignore_errors=True)
    summarize(results)


def summarize(results: dict[tuple[str, str, int], list[dict[str, Any]]]) -> None:
    print("\n# medians")
    for (backend, store_name, concurrency), runs in sorted(results.items()):
        rate = statistics.median(r["calls"] / r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu_seconds"] / r["calls"] * 1000 for r in runs)
        print(
            f"{backend:<14} {store_name:<10} c={concurrency:<4} {rate:6.0f} calls/s "
            f"({rate / (concurrency / DELAY):.0%} of ideal), CPU {cpu:.2f} ms/call (n={len(runs)})"
        )
    for backend in ("openai-compat", "litellm"):
        for store_name in ("SQLite", "PostgreSQL"):
            low = results.get((backend, store_name, 64))
            high = results.get((backend, store_name, 256))
            if low and high:
                grow = statistics.median(r["peak_rss_mb"] for r in high) - statistics.median(
                    r["peak_rss_mb"] for r in low
                )
                print(
                    f"memory per concurrent session, {backend}, {store_name}: "
                    f"{grow / 192 * 1024:.0f} kB"
                )
    goal = results.get(("openai-compat", "SQLite", 64))
    if goal:
        rate = statistics.median(r["calls"] / r["seconds"] for r in goal)
        verdict = "met" if rate >= GOAL * 64 / DELAY else "NOT met"
        print(
            f"goal (OpenAICompatLLM, SQLite, concurrency 64 >= {GOAL * 64 / DELAY:.0f} calls/s): "
            f"{verdict} ({rate:.0f} calls/s)"
        )


class _stores:
    """(name, fresh URL maker) for SQLite and, unless disabled, a private PostgreSQL cluster."""

    def __init__(self, args: argparse.Namespace, directory: str) -> None:
        self.args = args
        self.directory = directory
        self.count = 0
        self.postgres: Any = None
        self.context: Any = None

    def _sqlite(self) -> str:
        self.count += 1
        return f"sqlite:///{self.directory}/batch-{self.count}.db"

    def __enter__(self) -> list[tuple[str, Any]]:
        stores: list[tuple[str, Any]] = [("SQLite", self._sqlite)]
        if not self.args.no_postgres:
            try:
                self.context = _load_store_benchmark().postgres_backend()
                self.postgres = self.context.__enter__()
                stores.append(("PostgreSQL", self.postgres.fresh_url))
            except Exception as error:  # no PostgreSQL binaries here
                print(f"(PostgreSQL skipped: {error})")
                self.context = None
        return stores

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)


if __name__ == "__main__":
    main()
