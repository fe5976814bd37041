"""Leases on running tapes: one live run per tape; a killed run's lease lapses.

Every test runs on SQLite and on PostgreSQL (`scripts/with-postgres.sh`). The runs that are
killed or raced against run in their own processes (`tests/store/crash_agent.py`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tapeagents import (
    Agent,
    ErrorObservation,
    FinalAnswer,
    LeaseHeld,
    Node,
    StoreError,
    Tape,
    ToolCall,
    UsageError,
    UserMessage,
    run,
    run_sync,
)
from tapeagents.orchestrator import Event, Finished
from tapeagents.store import TapeStore
from tests.store.crash_agent import make

ROOT = Path(__file__).resolve().parents[2]
ME = f"pid {os.getpid()} on {socket.gethostname()}"


class Waits(Node):
    """Answers once `gate` is set: a run that is alive for as long as the test wants."""

    def __init__(self, gate: asyncio.Event, answer: str = "done") -> None:
        super().__init__("waits")
        self._gate = gate
        self._answer = answer

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[Any]:
        await self._gate.wait()
        yield FinalAnswer(answer=self._answer)


class Fails(Node):
    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[Any]:
        raise RuntimeError("a bug in the agent")
        yield  # pragma: no cover - makes this a generator


def waiting_agent(gate: asyncio.Event, answer: str = "done") -> Agent:
    return Agent("waiter", nodes=[Waits(gate, answer)])


def answering_agent(answer: str) -> Agent:
    gate = asyncio.Event()
    gate.set()
    return waiting_agent(gate, answer)


async def drain(events: AsyncIterator[Event]) -> Finished:
    async for event in events:
        if isinstance(event, Finished):
            return event
    raise AssertionError("no Finished event")


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- runs in one process


async def test_a_second_run_on_a_running_tape_is_refused_and_the_first_goes_on(
    store: TapeStore,
) -> None:
    gate = asyncio.Event()
    tape = Tape(steps=[UserMessage(content="go")])
    first = asyncio.create_task(drain(run(waiting_agent(gate), tape, store=store)))
    await until(lambda: store.lease_holder(tape.id) is not None)

    with pytest.raises(LeaseHeld) as refused:
        await drain(run(answering_agent("intruder"), store.get(tape.id), store=store))
    message = str(refused.value)
    assert f"Tape {tape.id} is being run by {ME}" in message
    assert "its lease expires in" in message and "--force" in message and "force=True" in message
    assert refused.value.tape_id == tape.id and 0 < refused.value.expires_in <= 30
    assert store.get(tape.id).kinds() == ["user"]  # the refused run wrote nothing
    assert store.status(tape.id) == "running"

    gate.set()
    finished = await first
    assert finished.reason == "stopped"
    assert store.get(tape.id).kinds() == ["user", "final_answer"]
    assert store.status(tape.id) == "stopped"
    assert store.lease_holder(tape.id) is None
    again = await drain(run(answering_agent("next"), store.get(tape.id), store=store))
    assert again.reason == "stopped"  # a finished run's tape can be run again at once


async def test_force_takes_the_tape_over_and_the_old_run_records_nothing(
    store: TapeStore,
) -> None:
    gate = asyncio.Event()
    tape = Tape(steps=[UserMessage(content="go")])
    first = asyncio.create_task(drain(run(waiting_agent(gate, "old"), tape, store=store)))
    await until(lambda: store.lease_holder(tape.id) is not None)
    old_run = store.lease_holder(tape.id)
    assert old_run is not None

    taken = await drain(run(answering_agent("new"), store.get(tape.id), store=store, force=True))
    assert taken.reason == "stopped"
    gate.set()
    with pytest.raises(StoreError):  # its write, or the record of its end, is refused
        await first
    stored = store.get(tape.id)
    assert [s.answer for s in stored if isinstance(s, FinalAnswer)] == ["new"]
    assert store.status(tape.id) == "stopped"
    assert store.lease_holder(tape.id) is None


async def test_the_heartbeat_keeps_a_long_run_alive(store_url: str) -> None:
    store = TapeStore(store_url, lease_seconds=0.6)
    gate = asyncio.Event()
    tape = Tape(steps=[UserMessage(content="go")])
    first = asyncio.create_task(drain(run(waiting_agent(gate), tape, store=store)))
    await until(lambda: store.lease_holder(tape.id) is not None)
    await asyncio.sleep(1.5)  # 2.5 lease lifetimes: only the heartbeat keeps it alive
    holder = store.lease_holder(tape.id)
    assert holder is not None and holder.pid == os.getpid()
    with pytest.raises(LeaseHeld):
        await drain(run(answering_agent("intruder"), store.get(tape.id), store=store))
    gate.set()
    assert (await first).reason == "stopped"
    assert store.lease_holder(tape.id) is None
    store.close()


async def test_the_lease_is_released_when_the_agent_raises(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="go")])
    with pytest.raises(RuntimeError, match="a bug in the agent"):
        await drain(run(Agent("buggy", nodes=[Fails("fails")]), tape, store=store))
    assert store.status(tape.id) == "error"
    assert store.lease_holder(tape.id) is None


async def test_the_lease_is_released_when_the_run_is_cancelled_or_abandoned(
    store: TapeStore,
) -> None:
    gate = asyncio.Event()
    tape = Tape(steps=[UserMessage(content="go")])
    task = asyncio.create_task(drain(run(waiting_agent(gate), tape, store=store)))
    await until(lambda: store.lease_holder(tape.id) is not None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.lease_holder(tape.id) is None
    assert store.status(tape.id) == "running"  # it was interrupted: the next run knows
    resumed = await drain(run(answering_agent("resumed"), store.get(tape.id), store=store))
    assert resumed.reason == "stopped"

    other = Tape(steps=[UserMessage(content="go")])
    events = run(waiting_agent(asyncio.Event()), other, store=store)
    pending = asyncio.ensure_future(events.__anext__())
    await until(lambda: store.lease_holder(other.id) is not None)
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await events.aclose()  # a consumer that stops reading
    assert store.lease_holder(other.id) is None


async def test_a_new_tape_and_a_fork_of_a_running_tape_run_freely(store: TapeStore) -> None:
    gate = asyncio.Event()
    tape = Tape(steps=[UserMessage(content="go")])
    first = asyncio.create_task(drain(run(waiting_agent(gate), tape, store=store)))
    await until(lambda: store.lease_holder(tape.id) is not None)
    child = store.fork(tape.id, 1)  # forking a live tape is fine: the fork is a new tape
    forked = await drain(run(answering_agent("fork"), child, store=store))
    assert forked.reason == "stopped" and store.status(child.id) == "stopped"
    gate.set()
    assert (await first).reason == "stopped"


# ----------------------------------------------------------------------------- the lease API


def test_a_lease_names_its_run_refuses_others_and_can_be_forced(store: TapeStore) -> None:
    with store.lease("t1") as mine:
        holder = store.lease_holder("t1")
        assert holder is not None and holder.alive
        assert (holder.pid, holder.host, holder.run_id) == (os.getpid(), mine.host, mine.run_id)
        assert holder.describe() == f"{ME} (run {mine.run_id})"
        assert 29 < holder.expires_in <= 30  # the default time to live
        with pytest.raises(LeaseHeld, match=f"Tape t1 is being run by {ME}"):
            store.lease("t1")
        mine.renew()
        theirs = store.lease("t1", force=True)
        with pytest.raises(LeaseHeld, match="took it over"):
            mine.renew()
        assert mine.lost
    # releasing the lost lease (leaving the block) left the new holder's lease alone
    holder = store.lease_holder("t1")
    assert holder is not None and holder.run_id == theirs.run_id
    theirs.release()
    theirs.release()  # twice is fine
    assert store.lease_holder("t1") is None
    assert store.lease_holders(["t1", "t2"]) == {}


def test_a_lease_that_is_not_renewed_lapses(store: TapeStore) -> None:
    first = store.lease("t1", ttl=0.3)
    assert store.lease_holders(["t1", "t2"]).keys() == {"t1"}
    time.sleep(0.5)
    assert store.lease_holder("t1") is None
    second = store.lease("t1")  # no force needed
    with pytest.raises(LeaseHeld):
        first.renew()
    second.release()


def test_expiry_is_decided_by_the_database_clock(
    store: TapeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease never reads this process's clock: one an hour fast changes nothing."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)
    lease = store.lease("t1", ttl=5)
    holder = store.lease_holder("t1")
    assert holder is not None and 4 < holder.expires_in <= 5
    with pytest.raises(LeaseHeld, match="expires in 5 s"):
        store.lease("t1")
    lease.release()


def test_the_time_to_live_comes_from_the_environment(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPEAGENTS_LEASE_SECONDS", "2.5")
    with TapeStore(store_url) as store:
        assert store.lease_seconds == 2.5
    with TapeStore(store_url, lease_seconds=7) as store:
        assert store.lease_seconds == 7
    monkeypatch.setenv("TAPEAGENTS_LEASE_SECONDS", "soon")
    with pytest.raises(UsageError, match="TAPEAGENTS_LEASE_SECONDS='soon' is not a number"):
        TapeStore(store_url)
    with pytest.raises(UsageError, match="lease_seconds must be a positive number"):
        TapeStore(store_url, lease_seconds=-1)


def test_a_store_at_the_revision_before_leases_is_upgraded(tmp_path: Path) -> None:
    from alembic import command

    from tapeagents.store.engine import Database
    from tapeagents.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    database = Database(url)
    with database.engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0003")
    database.engine.dispose()
    with TapeStore(url) as store:
        assert store.schema_revision() == "0004"
        with store.lease("t1"):
            assert store.lease_holder("t1") is not None


# ----------------------------------------------------------------------------- other processes

N_CALLS = 100


def start_worker(url: str, tape_id: str, ttl: float) -> subprocess.Popen[bytes]:
    """`tests/store/crash_agent.py` in its own process: 100 tool calls, about 2 s."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.crash_agent", url, tape_id, str(N_CALLS)],
        cwd=ROOT,
        env={**os.environ, "TAPEAGENTS_LEASE_SECONDS": str(ttl)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_lease(store: TapeStore, tape_id: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while (holder := store.lease_holder(tape_id)) is None:
        assert process.poll() is None, process.communicate()[1].decode()
        assert time.monotonic() < deadline, "the worker never took the lease"
        time.sleep(0.01)
    assert holder.pid == process.pid


def test_resuming_a_tape_that_another_process_runs_is_refused(store_url: str) -> None:
    """The issue's case: a resume used to write a false "interrupted" observation and break
    the live run. Now it is refused, and the live run ends as if nobody had tried."""
    store = TapeStore(store_url)
    process = start_worker(store_url, "live", ttl=5)
    try:
        wait_for_lease(store, "live", process)
        agent, env = make(N_CALLS)
        with pytest.raises(LeaseHeld, match=f"Tape live is being run by pid {process.pid} on "):
            run_sync(agent, store.get("live"), env, store=store, max_steps=10_000)
        assert process.wait(timeout=120) == 0, process.communicate()[1].decode()
    finally:
        process.kill()
        process.communicate()
    final = store.get("live")
    assert not [s for s in final if isinstance(s, ErrorObservation)]
    assert store.status("live") == "stopped"
    assert sum(isinstance(s, ToolCall) for s in final) == N_CALLS
    assert isinstance(final[-1], FinalAnswer)
    assert store.lease_holder("live") is None
    store.close()


def test_a_killed_runs_lease_refuses_resume_until_it_lapses(store_url: str) -> None:
    ttl = 2.0
    store = TapeStore(store_url)
    process = start_worker(store_url, "killed", ttl=ttl)
    wait_for_lease(store, "killed", process)
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    process.communicate()
    agent, env = make(N_CALLS)
    with pytest.raises(LeaseHeld, match=f"pid {process.pid} on .* expires in [0-2] s") as held:
        run_sync(agent, store.get("killed"), env, store=store, max_steps=10_000)
    assert "--force" in str(held.value)
    while store.lease_holder("killed") is not None:
        assert time.monotonic() - killed_at < ttl + 1, "the lease did not lapse"
        time.sleep(0.02)
    lapsed_after = time.monotonic() - killed_at
    assert lapsed_after > ttl / 3  # it was renewed at most a third of its lifetime before
    result = run_sync(agent, store.get("killed"), env, store=store, max_steps=10_000)
    assert result.reason == "stopped"  # the resume goes as it always did after a crash
    interrupted = [s for s in result.tape if isinstance(s, ErrorObservation)]
    assert len(interrupted) <= 1 and all("Interrupted" in s.error for s in interrupted)
    assert store.status("killed") == "stopped"
    store.close()


def test_resume_with_force_does_not_wait_for_a_killed_runs_lease(store_url: str) -> None:
    store = TapeStore(store_url)
    process = start_worker(store_url, "forced", ttl=30)
    wait_for_lease(store, "forced", process)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    agent, env = make(N_CALLS)
    started = time.monotonic()
    result = run_sync(agent, store.get("forced"), env, store=store, max_steps=10_000, force=True)
    assert result.reason == "stopped" and time.monotonic() - started < 25
    assert store.lease_holder("forced") is None
    store.close()
