"""How fast the studio's pages are over a store of 10,000 tapes.

    PYTHONPATH=. .venv/bin/python benchmarks/studio.py              # 10,000 tapes (~1 min)
    PYTHONPATH=. .venv/bin/python benchmarks/studio.py --tapes 2000 # a smaller store

Fills a SQLite store (a temp file) with `--tapes` tapes of 4 to 6 steps each (a user question,
a reasoning step, a tool call and its result, an answer; texts of 80 to 400 characters), spread
over 5 agents, 6 statuses, 3 outcomes and 8 tags, with one tape in 20 a fork of an earlier one.
Then requests pages through the real ASGI application (Starlette's TestClient: routing, the
security middleware, the store queries and the jinja2 rendering, no network) and prints the
median and 90th percentile over `--runs` requests of each:

- the tape list: first page, a page deep in the list, filtered by agent, status, tag and date,
  and a text search over every step;
- the tape view of one tape, and the comparison of a fork with its parent.

Goal: the tape list under 300 ms a page with 10,000 tapes.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402

from tapeagents import (  # noqa: E402
    AssistantMessage,
    Reasoning,
    Tape,
    TapeMetadata,
    ToolCall,
    ToolResult,
    UserMessage,
)
from tapeagents.store import TapeStore  # noqa: E402
from tapeagents.studio import create_app  # noqa: E402

AGENTS = ["calc", "travel", "support", "coder", "researcher"]
STATUSES = ["stopped", "stopped", "stopped", "awaiting_input", "error", "max_steps"]
OUTCOMES = ["success", "failure", None]
TAGS = ["eval", "v1", "v2", "demo", "regression", "nightly", "browser", "sql"]
WORDS = (
    "the agent reads a page then calls a tool and checks the answer before it writes a short "
    "reply with numbers dates and names of cities flights invoices tables and forms"
).split()
GOAL_MS = 300.0


def text(rng: random.Random, low: int, high: int) -> str:
    words: list[str] = []
    size = rng.randint(low, high)
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:size]


def fill(store: TapeStore, count: int, seed: int = 7) -> list[str]:
    """Store `count` tapes; returns their ids in creation order."""
    rng = random.Random(seed)
    ids: list[str] = []
    for i in range(count):
        if ids and i % 20 == 0:
            parent = rng.choice(ids[-200:])
            ids.append(store.fork(parent, 2, author="bench").id)
            continue
        call = ToolCall(name="lookup", arguments={"query": text(rng, 10, 40)})
        steps = [
            UserMessage(content=f"Task {i}: " + text(rng, 80, 200)),
            Reasoning(text=text(rng, 80, 300)),
            call,
            ToolResult(
                name="lookup",
                call_id=call.call_id,
                content=text(rng, 100, 400),
                action_id=call.metadata.id,
            ),
        ]
        if rng.random() < 0.7:
            steps.append(AssistantMessage(content=text(rng, 80, 300)))
        if rng.random() < 0.3:
            steps.append(UserMessage(content=text(rng, 20, 80)))
        metadata = TapeMetadata(
            task_id=f"task-{i % 500:03d}",
            outcome=rng.choice(OUTCOMES),
            reward=rng.choice([None, 0.0, 1.0]),
            tags=rng.sample(TAGS, rng.randint(0, 2)),
        )
        tape = Tape(steps=steps, metadata=metadata)
        store.save(tape, status=rng.choice(STATUSES), agent=rng.choice(AGENTS))
        ids.append(tape.id)
    return ids


def measure(get: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median and 90th percentile in ms of `runs` calls (after one warm-up call)."""
    get()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        get()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.9))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tapes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        store = TapeStore(f"sqlite:///{Path(folder) / 'tapes.db'}")
        start = time.perf_counter()
        ids = fill(store, args.tapes)
        fill_s = time.perf_counter() - start
        counts = store.stats()
        print(
            f"store: {counts['tapes']:,} tapes, {counts['steps']:,} steps "
            f"(filled in {fill_s:.1f} s); Python {platform.python_version()}, "
            f"{platform.machine()}"
        )
        fork = next(i for i in reversed(ids) if store.summary(i).parent_id)
        parent = store.summary(fork).parent_id
        pages = -(-args.tapes // 50)
        today = time.strftime("%Y-%m-%d")
        cases: list[tuple[str, str, dict[str, object]]] = [
            ("list, first page (50 tapes)", "/", {}),
            (f"list, page {pages // 2} of {pages}", "/", {"page": pages // 2}),
            ("list, 200 per page", "/", {"per": 200}),
            ("list, agent filter", "/", {"agent": "travel"}),
            ("list, status filter", "/", {"status": "error"}),
            ("list, tag filter", "/", {"tag": "regression"}),
            ("list, date filter", "/", {"since": today}),
            (
                "list, agent + tag + outcome",
                "/",
                {"agent": "calc", "tag": "eval", "outcome": "failure"},
            ),
            ("list, text search (many hits)", "/", {"q": "invoices tables"}),
            ("list, text search (one hit)", "/", {"q": "Task 4321:"}),
            ("tape view (fork of a 5-6 step tape)", f"/tapes/{fork}", {}),
            ("compare a fork with its parent", "/diff", {"a": parent, "b": fork}),
        ]
        app = create_app(store)
        rows = []
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for name, path, params in cases:

                def get(path: str = path, params: dict[str, object] = params) -> object:
                    response = client.get(path, params=params)
                    assert response.status_code == 200, (path, response.status_code)
                    return response

                median, p90 = measure(get, args.runs)
                rows.append((name, median, p90))
        store.close()

    width = max(len(name) for name, *_ in rows)
    print(f"\n{'page':<{width}}  {'median':>9}  {'p90':>9}")
    for name, median, p90 in rows:
        print(f"{name:<{width}}  {median:>7.1f} ms  {p90:>7.1f} ms")
    list_rows = [r for r in rows if r[0].startswith("list")]
    worst = max(median for _, median, _ in list_rows)
    verdict = "met" if worst < GOAL_MS else "NOT met"
    print(
        f"\nGoal (tape list under {GOAL_MS:.0f} ms a page): {verdict}; slowest list page "
        f"{worst:.1f} ms (median of {args.runs})."
    )


if __name__ == "__main__":
    main()
