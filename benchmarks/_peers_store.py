"""Peer workload for `store.py`: LangGraph with its `SqliteSaver`; run ONLY with the bench venv.

    .bench-venv/bin/python -I benchmarks/_peers_store.py time 1000 3          # ms per step
    .bench-venv/bin/python -I benchmarks/_peers_store.py time 1000 3 normal   # synchronous=NORMAL
    .bench-venv/bin/python -I benchmarks/_peers_store.py size 400             # bytes on disk

Workload (the same as ours in `store.py`): a StateGraph whose state is an appending list of
messages and one looping node that reads the LAST entry, "calls" an instant LLM and appends one
new 500-character entry. The seed entry and every appended entry are distinct 500-character
texts of real English words (`payload(i)`, defined here and imported by `store.py`, which also
checks the digest printed here, so both sides store the very same bytes). The graph is
compiled with `SqliteSaver` on a fresh sqlite3 file (the saver's own setup: WAL journal) and run
on one thread_id until the state holds N entries.

`sync` ("default" or "normal"): SQLite's `synchronous` pragma on the saver's connection.
"default" leaves the library's (and SQLite's) default, FULL: an fsync of the WAL at every
commit. "normal" matches our TapeStore (`synchronous=NORMAL`: durable against process crashes,
not against power loss), for an equal-durability comparison.

Prints one JSON object on stdout.
"""

import gc
import hashlib
import json
import os
import random
import sqlite3
import sys
import tempfile
import time

# ----------------------------------------------------------------------------- payload (shared)

WORDS = """
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye
job word business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education river garden window letter paper market
light music table voice road street village forest mountain island ocean bridge engine
keep find give tell become leave feel bring begin seem help show hear play move live believe
hold write provide stand lose pay meet include continue learn lead understand watch follow stop
create speak read allow spend grow open walk offer remember consider appear buy wait serve die
send expect build stay fall cut reach kill remain suggest raise pass sell require report decide
good new first last long great little own other old big high different small large next early
young important few public bad same able quiet bright careful simple strange green heavy warm
""".split()
PAYLOAD_CHARS = 500


def payload(i: int) -> str:
    """The i-th 500-character text: seeded random English words in sentences; all distinct."""
    rng = random.Random(i)
    parts: list[str] = [f"Step {i}."]
    size = len(parts[0])
    while size < PAYLOAD_CHARS + 20:
        sentence = rng.sample(WORDS, rng.randint(6, 14))
        text = " ".join(sentence).capitalize() + "."
        parts.append(text)
        size += len(text) + 1
    return " ".join(parts)[:PAYLOAD_CHARS]


def payloads_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- LangGraph


def _graph(texts: list[str], n: int, saver):
    import operator
    from typing import Annotated, TypedDict

    from langgraph.graph import END, START, StateGraph

    class State(TypedDict):
        messages: Annotated[list, operator.add]

    def instant_llm(messages: list[dict], index: int) -> str:
        return texts[index]  # scripted: the index-th distinct payload, like ours

    def agent_node(state: State) -> dict:
        prompt = [{"role": "user", "content": state["messages"][-1]["content"]}]
        answer = instant_llm(prompt, len(state["messages"]))
        return {"messages": [{"role": "assistant", "content": answer}]}

    def route(state: State) -> str:
        return END if len(state["messages"]) >= n else "agent"

    builder = StateGraph(State)
    builder.add_node("agent", agent_node)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route)
    return builder.compile(checkpointer=saver)


def one_run(n: int, texts: list[str], directory: str, sync: str) -> tuple[float, str]:
    """One run to n entries on a fresh database file; (seconds, path of the file)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = os.path.join(directory, f"langgraph-{n}-{time.monotonic_ns()}.db")
    connection = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(connection)
    saver.setup()
    if sync == "normal":
        connection.execute("PRAGMA synchronous=NORMAL")
    graph = _graph(texts, n, saver)
    config = {"configurable": {"thread_id": "bench"}, "recursion_limit": n + 10}
    gc.collect()
    start = time.perf_counter()
    result = graph.invoke({"messages": [{"role": "user", "content": texts[0]}]}, config)
    elapsed = time.perf_counter() - start
    messages = result["messages"]
    assert len(messages) == n and messages[-1]["content"] == texts[n - 1], len(messages)
    connection.close()
    return elapsed, path


def disk_bytes(path: str) -> int:
    """Size of the database and its WAL after folding the WAL in (PRAGMA wal_checkpoint)."""
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def main() -> None:
    from importlib.metadata import version

    mode, n = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    sync = sys.argv[4] if len(sys.argv) > 4 else "default"
    texts = [payload(i) for i in range(n)]
    assert len(set(texts)) == n and all(len(t) == PAYLOAD_CHARS for t in texts)
    out: dict = {
        "framework": "langgraph",
        "version": version("langgraph"),
        "saver_version": version("langgraph-checkpoint-sqlite"),
        "sqlite": sqlite3.sqlite_version,
        "steps": n,
        "sync": sync,
        "payload_digest": payloads_digest(texts),
    }
    with tempfile.TemporaryDirectory() as directory:
        if mode == "time":
            one_run(min(n, 20), texts, directory, sync)  # warm-up: imports, caches
            out["seconds"] = [one_run(n, texts, directory, sync)[0] for _ in range(runs)]
        elif mode == "size":
            _, path = one_run(n, texts, directory, sync)
            out["db_bytes"] = disk_bytes(path)
            out["payload_bytes"] = sum(len(t.encode()) for t in texts)
            connection = sqlite3.connect(path)
            out["rows"] = {
                table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("checkpoints", "writes")
            }
            connection.close()
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
