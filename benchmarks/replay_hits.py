"""Replay and cache hits: recorded multi-agent sessions answered entirely from the recording.

The sessions are those of the subagents shape in `tests/agent_shapes.py`: a root agent calls a
researcher subagent, which uses a tool and responds, and the root answers; then a follow-up
question does it again on the same tape (8 model requests a session). Each session asks about
other cities under its own request number, so no two requests are alike.

1. live: every session runs with its scripted models behind a `CachedLLM` over a fresh dict,
   recorded in a SQLite store (a temporary file); every request is new, so every call misses
   and fills the cache;
2. replay: every tape is replayed with `replay_sync` (the agent's LLMs become `ReplayLLM`s over
   the tape's recorded calls; the models themselves fail if asked): hits are the requests
   answered from the recording, misses the replays that asked anything else;
3. cache (memory) and cache (store): every session runs again from its first message, with
   each model replaced by one that fails if asked, behind a `CachedLLM` over the dict filled in
   (1), then over `TapeStore.llm_cache()`.

The goal: zero misses in 2 and 3. Times are wall seconds for all sessions, one after another.

    PYTHONPATH=. .venv/bin/python benchmarks/replay_hits.py               # 100 sessions
    PYTHONPATH=. .venv/bin/python benchmarks/replay_hits.py --sessions 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapeagents.llms import LLMOutput
from tapeagents.store import TapeStore
from tests.agent_shapes import Hits, cache_hits, replay_hits


def timed(label: str, measure: Callable[[], Hits]) -> Hits:
    start = time.perf_counter()
    hits = measure()
    seconds = time.perf_counter() - start
    print(f"{label:<16} {hits.hits:>6} {hits.misses:>7} {seconds:>9.2f}")
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    args = parser.parse_args()
    sessions = range(args.sessions)
    ids = [f"subagents-{i}" for i in sessions]
    with tempfile.TemporaryDirectory() as folder:
        store = TapeStore(f"sqlite:///{Path(folder) / 'sessions.db'}")
        try:
            cache: dict[str, LLMOutput] = {}
            print(f"{args.sessions} multi-agent sessions (subagents shape, two turns each)")
            print(f"{'':<16} {'hits':>6} {'misses':>7} {'seconds':>9}")
            live = timed(
                "live (recorded)",
                lambda: cache_hits("subagents", cache, sessions, live=True, store=store),
            )
            results: dict[str, Any] = {
                "replay": timed("replay", lambda: replay_hits("subagents", store, ids)),
                "cache (memory)": timed(
                    "cache (memory)", lambda: cache_hits("subagents", cache, sessions, live=False)
                ),
                "cache (store)": timed(
                    "cache (store)",
                    lambda: cache_hits("subagents", store.llm_cache(), sessions, live=False),
                ),
            }
            print(f"stored: {store.count()} tapes, {store.stats()['llm_calls']} LLM calls")
        finally:
            store.close()
    failed = [name for name, hits in results.items() if hits.misses or hits.hits != live.misses]
    if failed:
        raise SystemExit(f"Not every recorded call hit in: {', '.join(failed)}.")
    print(f"Every one of the {live.misses} recorded calls hit in replay and in both caches.")


if __name__ == "__main__":
    main()
