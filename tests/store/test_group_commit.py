"""Group commit: concurrent runs share transactions, yet each write is durable when awaited and
fails alone."""

from __future__ import annotations

import asyncio

import pytest

from tapeagents import Tape, UserMessage
from tapeagents.errors import StoreError
from tapeagents.store import TapeStore


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
