"""`run_batch` on asyncio: tapes per task, bounded concurrency, failures as data, resuming."""

from __future__ import annotations

import asyncio
import io
import time
from contextlib import aclosing
from typing import Any

import pytest
from rich.console import Console

from tapeagents import Agent, Environment, LLMNode, Tape, TapeMetadata, UserMessage
from tapeagents.batch import (
    BatchOptions,
    TaskResult,
    batch_tag,
    default_batch_id,
    run_batch,
    run_batch_sync,
    tape_id_for,
)
from tapeagents.errors import LLMError, StoreError, UsageError
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM
from tapeagents.store import TapeFilter, TapeStore
from tests.batch.agents import SlowLLM, answer, calc_agent, calc_env, steps_agent


def tasks(n: int, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "message": f"task {i}", "level": i % 3} for i in range(n)]


async def collect(*args: Any, **kwargs: Any) -> list[TaskResult]:
    return [result async for result in run_batch(*args, **kwargs)]


async def test_each_task_becomes_a_stored_tagged_tape(store: TapeStore) -> None:
    options = BatchOptions(batch_id="b1", concurrency=3)
    results = await collect(steps_agent(3), tasks(5), store=store, options=options)
    assert sorted(r.task_id for r in results) == [f"t{i}" for i in range(5)]
    assert {r.status for r in results} == {"stopped"}
    assert all(r.llm_calls == 3 and r.steps == 3 and not r.skipped for r in results)
    stored = store.list(TapeFilter(tag=batch_tag("b1")), limit=None)
    assert len(stored) == 5 and {s.status for s in stored} == {"stopped"}
    (summary,) = store.list(TapeFilter(task_id="t3"))
    assert summary.id == tape_id_for("b1", "t3")
    tape = store.get(summary.id)
    assert tape.metadata.task_id == "t3" and batch_tag("b1") in tape.metadata.tags
    assert tape.context == {"id": "t3", "message": "task 3", "level": 0}
    assert tape.kinds() == ["user", "reasoning", "reasoning", "final_answer"]
    assert len(store.llm_calls_of(tape)) == 3


async def test_concurrency_is_bounded_and_results_stream_as_they_finish() -> None:
    llm = SlowLLM(0.05)
    agent = Agent("slow", nodes=[LLMNode()], llms=llm)
    start = time.monotonic()
    arrivals = []
    started_at_arrival = []
    async for _ in run_batch(agent, tasks(12), options=BatchOptions(concurrency=4)):
        arrivals.append(time.monotonic() - start)
        started_at_arrival.append(llm.started)
    assert llm.max_in_flight == 4
    assert len(arrivals) == 12
    assert started_at_arrival[0] < 12  # the first result came before the last tasks started
    assert arrivals[-1] >= 3 * 0.05  # 12 tasks, 4 at a time


async def test_a_failing_task_is_stored_with_its_error_and_the_batch_goes_on(
    store: TapeStore,
) -> None:
    def envs(task: Any) -> Environment | None:
        if task["id"] == "no-env":
            raise ConnectionError("sandbox unavailable")
        return None

    work = [*tasks(3), {"id": "boom", "message": "boom"}, {"id": "no-env", "message": "hi"}]
    results = {
        r.task_id: r for r in await collect(steps_agent(2), work, store=store, env_factory=envs)
    }
    assert [results[f"t{i}"].status for i in range(3)] == ["stopped"] * 3
    assert results["boom"].failed and "blew up on purpose" in (results["boom"].error or "")
    assert results["no-env"].failed and "sandbox unavailable" in (results["no-env"].error or "")
    for task_id in ("boom", "no-env"):
        (summary,) = store.list(TapeFilter(task_id=task_id))
        assert summary.status == "error"
        assert "RuntimeError" in (store.get(summary.id).metadata.error or "") or task_id == "no-env"
    no_env = store.get(results["no-env"].tape_id)
    assert no_env.metadata.error == "ConnectionError: sandbox unavailable"
    assert no_env.context == {"id": "no-env", "message": "hi"}
    assert store.get(results["boom"].tape_id).kinds() == ["user", "node_failure"]


async def test_an_llm_failure_ends_the_task_with_status_error(sqlite_store: TapeStore) -> None:
    def down(prompt: Prompt) -> str:
        raise LLMError("the server is down")

    agent = Agent("down", nodes=[LLMNode()], llms=ScriptedLLM(down))
    (result,) = await collect(agent, tasks(1), store=sqlite_store)
    assert result.status == "error" and "the server is down" in (result.error or "")
    tape = sqlite_store.get(result.tape_id)
    assert tape.kinds() == ["user", "llm_failure"]
    assert "the server is down" in (tape.metadata.error or "")
    assert sqlite_store.summary(result.tape_id).status == "error"


async def test_environments_per_task_are_made_and_closed() -> None:
    closed: list[str] = []

    class Tracked(type(calc_env())):  # type: ignore[misc]
        async def aclose(self) -> None:
            closed.append("x")

    async def make(task: Any) -> Environment:
        return Tracked(calc_env().tools)

    results = await collect(calc_agent(), tasks(3), env_factory=make)
    assert {r.status for r in results} == {"stopped"}
    assert [r.tape.kinds() for r in results if r.tape] == [  # type: ignore[union-attr]
        ["user", "tool_call", "tool_result", "final_answer"]
    ] * 3
    assert len(closed) == 3
    shared = await collect(calc_agent(), tasks(2), env=calc_env())
    assert {r.status for r in shared} == {"stopped"}


async def test_rerun_skips_finished_tapes_and_resumes_interrupted_ones(store: TapeStore) -> None:
    work = [{"id": f"t{i}", "message": "fast" if i < 2 else "slow"} for i in range(8)]
    agent = Agent("slow", nodes=steps_agent(4).nodes, llms=SlowLLM(0.02))
    first = []
    options = BatchOptions(concurrency=4, batch_id="r")
    async with aclosing(run_batch(agent, work, store=store, options=options)) as run:
        async for result in run:
            first.append(result)
            if len(first) == 2:
                break  # closing the batch cuts the slow tapes off mid-run
    running = store.list(TapeFilter(tag=batch_tag("r"), status="running"), limit=None)
    assert running, "some tapes were cut off mid-run"
    partial = {s.id: s.length for s in running}

    second = await collect(agent, work, store=store, options=options)
    by_id = {r.task_id: r for r in second}
    assert sorted(by_id) == sorted(t["id"] for t in work)
    skipped = {r.task_id for r in second if r.skipped}
    assert {r.task_id for r in first} <= skipped  # (a tape may finish unreported at the break)
    assert {s.task_id for s in running}.isdisjoint(skipped)
    resumed = [r for r in second if r.resumed]
    assert {r.tape_id for r in resumed} == set(partial)
    for result in resumed:  # continued from the last stored step: nothing is done twice
        assert result.steps == 4 - (partial[result.tape_id] - 1)
    for summary in store.list(TapeFilter(tag=batch_tag("r")), limit=None):
        assert summary.status == "stopped"
        assert store.get(summary.id).kinds() == [
            "user",
            "reasoning",
            "reasoning",
            "reasoning",
            "final_answer",
        ]
    third = await collect(agent, work, store=store, options=BatchOptions(batch_id="r"))
    assert all(r.skipped for r in third)


async def test_a_rerun_leaves_tapes_that_live_runs_hold_and_resumes_killed_ones(
    store: TapeStore,
) -> None:
    work = [{"id": "live", "message": "task"}, {"id": "killed", "message": "task"}]
    ids = {task["id"]: tape_id_for("l", task["id"]) for task in work}
    for task_id, tape_id in ids.items():  # both cut off after their first step
        tape = Tape(
            id=tape_id,
            steps=[UserMessage(content="task")],
            metadata=TapeMetadata(task_id=task_id, tags=[batch_tag("l")]),
        )
        store.save(tape, status="running", agent="steps")
    live = store.lease(ids["live"], ttl=0.6)  # another process runs the batch: it renews
    live.keep_alive()
    store.lease(ids["killed"], ttl=0.6)  # a killed worker's lease: nobody renews it

    options = BatchOptions(batch_id="l", concurrency=2)
    results = {
        r.task_id: r for r in await collect(steps_agent(2), work, store=store, options=options)
    }
    held = results["live"]
    assert held.status == "held" and held.failed and held.steps == 0
    assert held.error is not None and f"Tape {ids['live']} is being run by pid" in held.error
    assert store.get(ids["live"]).kinds() == ["user"]  # left alone: no "interrupted" step
    assert store.status(ids["live"]) == "running"
    resumed = results["killed"]  # after waiting for its lease to lapse
    assert resumed.resumed and resumed.status == "stopped" and resumed.steps == 2

    await live.arelease()  # that run ended without finishing the tape (it was stopped)
    (again,) = [
        r
        for r in await collect(steps_agent(2), work, store=store, options=options)
        if not r.skipped
    ]
    assert again.task_id == "live" and again.resumed and again.status == "stopped"
    assert store.get(ids["live"]).kinds() == ["user", "reasoning", "final_answer"]


async def test_cancelling_the_batch_leaves_a_consistent_store(sqlite_store: TapeStore) -> None:
    agent = Agent("slow", nodes=steps_agent(3).nodes, llms=SlowLLM(0.05))
    work = tasks(6)

    async def drain() -> None:
        options = BatchOptions(concurrency=6, batch_id="c")
        async for _ in run_batch(agent, work, store=sqlite_store, options=options):
            pass

    runner = asyncio.create_task(drain())
    await asyncio.sleep(0.08)
    runner.cancel()  # what Ctrl-C does to asyncio.run's main task
    with pytest.raises(asyncio.CancelledError):
        await runner
    stored = sqlite_store.list(TapeFilter(tag=batch_tag("c")), limit=None)
    assert stored and all(s.status == "running" for s in stored)
    for summary in stored:
        tape = sqlite_store.get(summary.id)  # every stored prefix loads
        assert tape.kinds()[0] == "user" and len(tape) == summary.length
    results = await collect(agent, work, store=sqlite_store, options=BatchOptions(batch_id="c"))
    assert {r.status for r in results} == {"stopped"}


async def test_retry_failed_resumes_tapes_that_ended_in_error(sqlite_store: TapeStore) -> None:
    calls = {"n": 0}

    def once_down(prompt: Prompt) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise LLMError("temporarily down")
        return answer(prompt)

    agent = Agent("flaky", nodes=[LLMNode()], llms=ScriptedLLM(once_down))
    options = BatchOptions(batch_id="f")
    (first,) = await collect(agent, tasks(1), store=sqlite_store, options=options)
    assert first.failed
    (again,) = await collect(agent, tasks(1), store=sqlite_store, options=options)
    assert again.skipped and again.status == "error"
    retrying = BatchOptions(batch_id="f", retry_failed=True)
    (retried,) = await collect(agent, tasks(1), store=sqlite_store, options=retrying)
    assert retried.resumed and retried.status == "awaiting_input"
    assert sqlite_store.get(retried.tape_id).kinds() == ["user", "llm_failure", "assistant"]


async def test_usage_errors() -> None:
    agent = steps_agent(2)
    with pytest.raises(UsageError, match="Task 1 has no 'id'"):
        await collect(agent, [{"id": "a"}, {"message": "no id"}])
    with pytest.raises(UsageError, match="'a' is used twice"):
        await collect(agent, [{"id": "a"}, {"id": "a"}])
    with pytest.raises(UsageError, match="not both"):
        await collect(agent, tasks(1), env=calc_env(), env_factory=lambda task: None)
    with pytest.raises(UsageError, match="concurrency must be at least 1"):
        BatchOptions(concurrency=0)
    with pytest.raises(UsageError, match="Unknown batch backend 'threads'"):
        BatchOptions(backend="threads")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chunk_size must be at least 1"):
        BatchOptions(chunk_size=0)
    with pytest.raises(UsageError, match="async for result in run_batch"):
        run_batch_sync(agent, tasks(1))


def test_the_default_batch_id_makes_a_rerun_resume(tmp_path: Any) -> None:
    work = tasks(4)
    with TapeStore(f"sqlite:///{tmp_path / 't.db'}") as store:
        first = run_batch_sync(steps_agent(2), work, store=store)
        assert first.batch_id == default_batch_id("steps", [t["id"] for t in work])
        second = run_batch_sync(steps_agent(2), work, store=store)
    assert second.batch_id == first.batch_id and second.skipped == 4


def test_progress_bar_and_summary_table(sqlite_store: TapeStore) -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=False)
    work = [*tasks(4), {"id": "boom", "message": "boom"}]
    summary = run_batch_sync(
        steps_agent(2),
        work,
        store=sqlite_store,
        options=BatchOptions(batch_id="p"),
        progress=True,
        console=console,
    )
    assert summary.by_status() == {"error": 1, "stopped": 4}
    assert summary.failed == 1 and summary.total("llm_calls") == 8
    text = out.getvalue()
    assert "batch p" in text and "5/5" in text and "4 ok" in text and "1 failed" in text
    assert "Batch p" in text and "tasks run" in text and "LLM calls" in text and "calls/s" in text


async def test_store_that_disappears_mid_batch_stops_the_batch(postgres_url: str) -> None:
    import sqlalchemy as sa

    store = TapeStore(postgres_url)
    database = postgres_url.rsplit("/", 1)[1]
    admin_url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    calls = {"n": 0}

    def drop_database_on_tenth_call(prompt: Prompt) -> LLMOutput:
        calls["n"] += 1
        if calls["n"] == 10:
            admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE "{database}" WITH (FORCE)'))
            admin.dispose()
        return LLMOutput(content=answer(prompt))

    agent = Agent("gone", nodes=steps_agent(3).nodes, llms=ScriptedLLM(drop_database_on_tenth_call))
    seen = []
    with pytest.raises(StoreError, match="again \\(batch id 'gone-1'\\) to resume") as info:
        options = BatchOptions(batch_id="gone-1")
        async for result in run_batch(agent, tasks(20), store=store, options=options):
            seen.append(result)
    assert "stopped" in str(info.value) and "Cannot" in str(info.value)
    assert len(seen) < 20
    store.close()


async def test_after_closing_a_batch_the_store_no_longer_changes(postgres_url: str) -> None:
    """PostgreSQL writes run in threads; closing the batch waits for the ones in progress."""
    agent = steps_agent(4)  # no model latency: most of the time goes to the store's threads
    with TapeStore(postgres_url) as store:
        work = tasks(32)
        options = BatchOptions(concurrency=16, batch_id="x")
        async with aclosing(run_batch(agent, work, store=store, options=options)) as run:
            async for _ in run:
                break
        before = {s.id: s.length for s in store.list(TapeFilter(tag=batch_tag("x")), limit=None)}
        await asyncio.sleep(0.3)
        after = {s.id: s.length for s in store.list(TapeFilter(tag=batch_tag("x")), limit=None)}
        assert before == after
        results = await collect(agent, work, store=store, options=options)  # resumes cleanly
        assert {r.status for r in results} == {"stopped"}
