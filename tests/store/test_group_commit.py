"""Group commit: concurrent runs share transactions, yet each write is durable when awaited and
fails alone."""

from __future__ import annotations

import asyncio

import pytest

from tapeagents import (
    Action,
    Agent,
    FinalAnswer,
    Finished,
    LLMNode,
    Observation,
    Reasoning,
    StepAppended,
    Tape,
    ToolEnvironment,
    UserMessage,
    run,
)
from tapeagents.errors import StoreError
from tapeagents.llms import LLMOutput, ScriptedLLM, tool_call
from tapeagents.store import TapeStore
from tests.store import faults


def _group(store: TapeStore):  # type: ignore[no-untyped-def]
    return next(iter(store._groups.values()))


async def test_concurrent_appends_share_transactions_and_are_stored(store: TapeStore) -> None:
    tapes = [Tape(steps=[UserMessage(content=f"task {i}")]) for i in range(20)]
    await asyncio.gather(*(store.asave(tape, status="running") for tape in tapes))

    async def grow(tape: Tape) -> None:
        for n in range(5):
            step = UserMessage(content=f"{tape.id} step {n}")
            tape.append(step)
            await store.aappend_steps(tape.id, len(tape) - 1, [step])
            # awaited means committed: another connection sees it
            assert store.summary(tape.id).length == len(tape)
        await store.aset_status(tape.id, "stopped", metadata=tape.metadata)

    await asyncio.gather(*(grow(tape) for tape in tapes))

    for tape in tapes:
        assert store.get(tape.id).steps == tape.steps
        assert store.status(tape.id) == "stopped"
    group = _group(store)
    assert group.writes == 20 + 20 * 5 + 20
    assert group.groups < group.writes / 2  # writes really were committed together


async def test_a_conflicting_write_fails_alone(store: TapeStore) -> None:
    good, bad = Tape(steps=[UserMessage(content="a")]), Tape(steps=[UserMessage(content="b")])
    store.save(good)
    store.save(bad)
    late = UserMessage(content="appended at the wrong index")
    results = await asyncio.gather(
        store.aappend_steps(good.id, 1, [UserMessage(content="fine")]),
        store.aappend_steps(bad.id, 5, [late]),
        store.aset_status(good.id, "stopped"),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError) and "not 5" in str(results[1])
    assert store.summary(good.id).length == 2 and store.status(good.id) == "stopped"
    assert store.summary(bad.id).length == 1


async def test_save_returns_the_status_before(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="hi")])
    assert await store.asave(tape, status="running") is None
    assert await store.asave(tape, status="running") == "running"
    assert store.save(tape, status="stopped") == "running"


async def test_a_cancelled_writer_waits_for_its_write(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="hi")])
    store.save(tape)
    step = UserMessage(content="kept")
    writer = asyncio.create_task(store.aappend_steps(tape.id, 1, [step]))
    await asyncio.sleep(0)  # queued, not yet committed
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert store.get(tape.id).steps[-1] == step  # the write was not torn or lost


class Checked(ToolEnvironment):
    """Records, at each action, how many steps of the tape the store holds."""

    def __init__(self, store: TapeStore) -> None:
        super().__init__([add])
        self.store = store
        self.stored_at_action: list[tuple[int, int]] = []

    async def react(self, action: Action, tape: Tape) -> Observation:
        self.stored_at_action.append((len(tape), self.store.summary(tape.id).length))
        return await super().react(action, tape)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def calc_agent() -> Agent:
    answers = [
        "Let me add them.",
        LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')]),
        LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')]),
    ]
    node = LLMNode(steps=[FinalAnswer], tools=ToolEnvironment([add]).tools, text_step=Reasoning)
    return Agent("calc", nodes=[node], llms=ScriptedLLM(answers))


async def test_write_behind_stores_each_action_before_the_environment_acts(
    store: TapeStore,
) -> None:
    env = Checked(store)
    events = [e async for e in run(calc_agent(), "2+3?", env, store=store, write_behind=True)]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert env.stored_at_action == [(3, 3)]  # user, thought, action: all committed
    assert store.get(finished.tape.id).steps == finished.tape.steps
    assert store.status(finished.tape.id) == "stopped"


async def test_write_behind_raises_a_failed_write_and_keeps_a_prefix(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="2+3?")])
    store.save(tape)
    events = run(calc_agent(), tape, Checked(store), store=store, write_behind=True)
    async for event in events:  # up to the thought, written behind
        if isinstance(event, StepAppended):
            break
    store.append_steps(tape.id, 1, [UserMessage(content="another process wrote here")])
    with pytest.raises(StoreError, match="another process appended"):
        async for _ in events:
            pass
    stored = store.get(tape.id)
    assert [s.kind for s in stored.steps] == ["user", "user"]  # a prefix, nothing torn


def _collect_loop_errors() -> list[dict]:
    """Errors the event loop would only log (a callback that raised): a test asserts none."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


async def test_a_failed_commit_fails_exactly_the_writes_of_its_group(store: TapeStore) -> None:
    """A COMMIT that fails (here a deferred constraint, see tests/store/faults.py) gives every
    write of the group one outcome: the database's error. None is retried, none is stored, no
    event says otherwise, and the store takes the next writes (the failed transaction was
    rolled back). On PostgreSQL this used to hang every later write."""
    loop_errors = _collect_loop_errors()
    tapes = [Tape(steps=[UserMessage(content=f"tape {i}")]) for i in range(3)]
    for tape in tapes:
        store.save(tape)
    faults.fail_commit(store, "POISON")
    group_writes = [
        store.aappend_steps(tapes[0].id, 1, [UserMessage(content="fine")]),
        store.aappend_steps(tapes[1].id, 1, [UserMessage(content="POISON")]),
        store.aappend_steps(tapes[2].id, 1, [UserMessage(content="fine too")]),
    ]
    results = await asyncio.wait_for(asyncio.gather(*group_writes, return_exceptions=True), 30)
    database_error = (
        "FOREIGN KEY constraint failed"
        if store.engine.dialect.name == "sqlite"
        else "injected COMMIT failure"
    )
    for result in results:
        assert isinstance(result, StoreError), result
        assert database_error in str(result) and "another process" not in str(result)
    assert [store.summary(tape.id).length for tape in tapes] == [1, 1, 1]

    # one write alone: the same, and the store goes on
    with pytest.raises(StoreError, match=database_error):
        await asyncio.wait_for(
            store.aappend_steps(tapes[1].id, 1, [UserMessage(content="POISON")]), 30
        )
    with pytest.raises(StoreError, match=database_error):  # the blocking path too
        store.append_steps(tapes[1].id, 1, [UserMessage(content="POISON")])
    for tape in tapes:
        step = UserMessage(content="after the failure")
        await asyncio.wait_for(store.aappend_steps(tape.id, 1, [step]), 30)
        assert [s.content for s in store.get(tape.id).steps] == [  # type: ignore[attr-defined]
            tape.steps[0].content,  # type: ignore[attr-defined]
            "after the failure",
        ]
    assert loop_errors == []


async def test_a_failed_commit_ends_the_runs_it_held_and_reports_only_stored_steps(
    store: TapeStore,
) -> None:
    """Runs sharing commits: the group whose COMMIT fails ends the runs it held with an error
    step; every other run finishes. Every step an event reported is stored."""
    loop_errors = _collect_loop_errors()
    faults.fail_commit(store, "POISON")

    def agent(i: int) -> Agent:
        answers = [
            "POISON thought" if i == 0 else f"Thought {i}.",
            LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')]),
            LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')]),
        ]
        node = LLMNode(steps=[FinalAnswer], tools=ToolEnvironment([add]).tools, text_step=Reasoning)
        return Agent("calc", nodes=[node], llms=ScriptedLLM(answers))

    async def one(i: int) -> tuple[Finished, list[StepAppended]]:
        appended: list[StepAppended] = []
        async for event in run(agent(i), f"task {i}", ToolEnvironment([add]), store=store):
            if isinstance(event, StepAppended):
                appended.append(event)
            elif isinstance(event, Finished):
                return event, appended
        raise AssertionError("no Finished event")

    outcomes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 60)
    reasons = [finished.reason for finished, _ in outcomes]
    assert reasons[0] == "error"
    assert set(reasons) <= {"error", "stopped"}
    for finished, appended in outcomes:
        stored = store.get(finished.tape.id)
        assert stored.steps == finished.tape.steps
        assert store.status(stored.id) == finished.reason
        for event in appended:  # nothing reported that the store does not hold
            assert stored.steps[event.index].metadata.id == event.step.metadata.id
        if finished.reason == "error":
            assert finished.error is not None and "another process" not in finished.error
            assert "FOREIGN KEY constraint failed" in finished.error or (
                "injected COMMIT failure" in finished.error
            )
            assert stored.kinds() == ["user", "store_failure"]
        else:
            assert stored.kinds()[-1] == "final_answer"
    assert loop_errors == []
