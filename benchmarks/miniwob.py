"""MiniWoB++ speed: episodes per minute and median episode time of the scripted experts.

    PYTHONPATH=. .venv/bin/python benchmarks/miniwob.py               # ours + BrowserGym, ~3 min
    PYTHONPATH=. .venv/bin/python benchmarks/miniwob.py --no-peers    # ours only
    PYTHONPATH=. .venv/bin/python benchmarks/miniwob.py --episodes 50 # more episodes per task

An episode is a whole tape: in-place reset, first page snapshot, the expert's actions and their
observations, scoring, the final step. Each task's page is loaded once before timing (a warm
page), as in any long evaluation. Measured with one browser context (episodes one after the
other) and with four contexts (four episodes at a time, one asyncio worker each), without a
store and with a SQLite store (every step durable). Goal: median episode at most 300 ms.

BrowserGym (`browsergym-miniwob` in `.bench-venv`, on the same system Chromium) runs in a
subprocess: median `env.reset()` time, and a click-test episode (reset + one click).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tapeagents.environments.browser import (
    EXPERT_POLICIES,
    MiniWoBEnvironment,
    expert_agent,
    miniwob_html_dir,
)

from tapeagents.store import TapeStore

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".bench-venv" / "bin" / "python"


async def measure(
    env: MiniWoBEnvironment, tasks: list[str], episodes: int, workers: int, store: TapeStore | None
) -> dict[str, float]:
    """Run `episodes` seeds of every task (one task after the other), `workers` at a time."""
    agent = expert_agent()
    times: list[float] = []
    rewards: list[float] = []
    by_task: dict[str, list[float]] = {}
    wall = 0.0
    for task in tasks:
        # warm: one loaded page per worker, as in a long evaluation (not timed)
        await asyncio.gather(*(env.run_episode(agent, task, seed) for seed in range(workers)))
        queue = list(range(1000 + episodes - 1, 999, -1))

        async def worker(task: str, queue: list[int]) -> None:
            while queue:
                seed = queue.pop()
                started = time.perf_counter()
                tape = await env.run_episode(agent, task, seed, store=store)
                times.append(time.perf_counter() - started)
                by_task.setdefault(task, []).append(times[-1])
                rewards.append(tape.metadata.reward or 0.0)

        started = time.perf_counter()
        await asyncio.gather(*(worker(task, queue) for _ in range(workers)))
        wall += time.perf_counter() - started
    return {
        "episodes": len(times),
        "per_minute": len(times) / wall * 60,
        "median_ms": statistics.median(times) * 1000,
        "p90_ms": statistics.quantiles(times, n=10)[-1] * 1000,
        "success": sum(r >= 1.0 for r in rewards) / len(rewards),
        **{f"{task}_ms": statistics.median(t) * 1000 for task, t in by_task.items()},
    }


async def reset_times(env: MiniWoBEnvironment, task: str, n: int) -> float:
    """Median seconds of `start_episode` (in-place reset + first snapshot) on a warm page."""
    times = []
    for seed in range(n + 1):
        started = time.perf_counter()
        tape = await env.start_episode(task, seed)
        times.append(time.perf_counter() - started)
        await env.end_episode(tape)
    return statistics.median(times[1:])


async def ours(tasks: list[str], episodes: int) -> float:
    """Print our figures; return the median click-test episode in ms (to compare with peers)."""
    async with MiniWoBEnvironment() as env:
        await env.run_episode(expert_agent(), "click-button", 0)  # warm
        reset = await reset_times(env, "click-button", 30)
        print(f"\nin-place reset + first snapshot (click-button): {reset * 1000:.1f} ms (median)")
        print(f"\n{len(tasks)} expert tasks x {episodes} seeds")
        print(f"{'setting':38s} {'eps/min':>8s} {'median':>9s} {'p90':>9s} {'reward 1':>9s}")
        with tempfile.TemporaryDirectory() as tmp:
            for label, workers, durable in [
                ("1 context, no store", 1, False),
                ("4 contexts, no store", 4, False),
                ("1 context, SQLite store", 1, True),
                ("4 contexts, SQLite store", 4, True),
            ]:
                store = TapeStore(f"sqlite:///{tmp}/{workers}.db") if durable else None
                result = await measure(env, tasks, episodes, workers, store)
                if store is not None:
                    store.close()
                print(
                    f"{label:38s} {result['per_minute']:8.0f} {result['median_ms']:7.0f} ms "
                    f"{result['p90_ms']:7.0f} ms {result['success']:9.0%}"
                )
                if workers == 1 and not durable:
                    click_test = result["click-test_ms"]
        print(f"\nclick-test alone (1 context, no store): {click_test:.0f} ms median episode")
    return click_test


def peers(resets: int, click_test_ms: float) -> None:
    if not PEER_PYTHON.exists():
        print("\nBrowserGym: skipped (no .bench-venv; see docs/benchmarks.md)")
        return
    html = miniwob_html_dir() / "miniwob"
    environment = {**os.environ, "MINIWOB_URL": f"file://{html}/"}
    command = [str(PEER_PYTHON), str(ROOT / "benchmarks" / "_peers_miniwob.py"), str(resets)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        print(f"\nBrowserGym: failed\n{done.stderr[-2000:]}")
        return
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"\nBrowserGym {result['version']} (browsergym/miniwob.click-test, system Chromium): "
        f"reset {result['reset_ms']:.0f} ms (median of {resets}), "
        f"episode (reset + one click) {result['episode_ms']:.0f} ms, "
        f"reward 1 on {result['success']:.0%}"
    )
    ratio = result["episode_ms"] / click_test_ms
    print(f"BrowserGym click-test episode / ours: {ratio:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=20, help="seeds per task")
    parser.add_argument("--no-peers", action="store_true", help="skip BrowserGym")
    parser.add_argument("--peer-resets", type=int, default=10, help="BrowserGym episodes")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    click_test_ms = asyncio.run(ours(sorted(EXPERT_POLICIES), args.episodes))
    if not args.no_peers:
        peers(args.peer_resets, click_test_ms)


if __name__ == "__main__":
    main()
