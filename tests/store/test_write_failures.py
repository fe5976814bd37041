"""Writes the store refuses: a model answer is stored whole or not at all, and a run whose write
is refused (a failed COMMIT, text the database cannot hold, a full disk) ends with an error
step, status "error" and the database's message, reporting no step the store does not hold.

The faults are real database errors (tests/store/faults.py; a full PostgreSQL disk is a small
tmpfs, mounted as root), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from tapeagents import (
    Agent,
    ErrorObservation,
    FinalAnswer,
    Finished,
    LLMNode,
    Node,
    Reasoning,
    StepAppended,
    StoreFailure,
    Tape,
    ToolCall,
    ToolEnvironment,
    UserMessage,
    run,
)
from tapeagents.errors import StoreConflict
from tapeagents.llms import LLMOutput, ScriptedLLM, tool_call
from tapeagents.store import TapeStore
from tests.store import faults
from tests.store.conftest import postgres_database


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def echo(text: str) -> str:
    """Return the text."""
    return text


def long_nul(n: int) -> str:
    """Return a long text with a NUL character in it."""
    return "x" * n + "\x00" + "y" * 10


TOOLS = ToolEnvironment([add, echo, long_nul])


def answers_agent(*answers: str | LLMOutput) -> Agent:
    """An agent whose answers are a thought and a tool call at once (one LLM output)."""
    node = LLMNode(steps=[FinalAnswer], tools=TOOLS.tools, text_step=Reasoning)
    return Agent("calc", nodes=[node], llms=ScriptedLLM(list(answers)))


def thought_and_call(thought: str, name: str, arguments: dict[str, object]) -> LLMOutput:
    return LLMOutput(content=thought, tool_calls=[tool_call(name, json.dumps(arguments))])


FINAL = LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')])


async def drain(
    agent: Agent, tape: Tape | str, store: TapeStore, *, write_behind: bool = False
) -> tuple[Finished, list[StepAppended]]:
    """Run to the end (60 s at most: a hang fails the test); the Finished event and every
    StepAppended."""

    async def go() -> tuple[Finished, list[StepAppended]]:
        appended: list[StepAppended] = []
        async for event in run(agent, tape, TOOLS, store=store, write_behind=write_behind):
            if isinstance(event, StepAppended):
                appended.append(event)
            elif isinstance(event, Finished):
                return event, appended
        raise AssertionError("run() ended without Finished")

    return await asyncio.wait_for(go(), 60)


def database_error(store: TapeStore) -> str:
    """What `faults.fail_commit` makes the database say."""
    if store.engine.dialect.name == "sqlite":
        return "FOREIGN KEY constraint failed"
    return "injected COMMIT failure"


def assert_reported_steps_are_stored(store: TapeStore, tape_id: str, appended: list) -> None:
    stored = store.get(tape_id)
    for event in appended:
        assert event.index < len(stored), f"step {event.index} was reported, not stored"
        assert stored.steps[event.index].metadata.id == event.step.metadata.id


# ----------------------------------------------------------------------------- whole answers


async def test_a_fault_between_the_steps_of_one_answer_stores_none_of_it(
    store: TapeStore,
) -> None:
    """The thought and the tool call of one answer are one write: a fault on the tool call's
    row leaves neither (never a thought without its tool call), and a resume asks the model
    again and ends like a run that never failed."""
    faults.refuse_kind(store, "tool_call")
    answers = [thought_and_call("Let me add.", "add", {"a": 2, "b": 3}), FINAL]
    tape = Tape(steps=[UserMessage(content="2+3?")])
    finished, appended = await drain(answers_agent(*answers), tape, store)
    assert finished.reason == "error"
    assert finished.error is not None and "injected fault: step refused" in finished.error
    assert "steps 1 to 2 (reasoning, tool_call)" in finished.error
    assert "another process" not in finished.error
    assert appended == []  # nothing was reported: nothing was stored
    stored = store.get(tape.id)
    assert stored.kinds() == ["user", "store_failure"]
    assert stored.steps == finished.tape.steps
    assert store.status(tape.id) == "error"
    failure = stored.steps[1]
    assert isinstance(failure, StoreFailure) and failure.metadata.node == "main"

    faults.clear(store)
    resumed, _ = await drain(answers_agent(*answers), stored, store)
    assert resumed.reason == "stopped"
    final = store.get(tape.id)
    assert final.kinds() == [
        "user",
        "store_failure",
        "reasoning",
        "tool_call",
        "tool_result",
        "final_answer",
    ]
    reference = (await drain(answers_agent(*answers), "2+3?", store))[0].tape
    kept = [s.llm_dict() for s in final if not isinstance(s, StoreFailure)]
    assert kept[1:] == [s.llm_dict() for s in reference][1:]


async def test_a_node_failure_is_stored_with_the_steps_before_it_in_one_write(
    store: TapeStore,
) -> None:
    """A node that raises: its steps so far and the `NodeFailure` go to the store in one
    write (a fault on the failure's row leaves neither), then the exception surfaces."""

    class Broken(Node):
        async def generate(self, agent, tape):  # type: ignore[no-untyped-def]
            yield Reasoning(text="before")
            raise KeyError("oops")

    tape = Tape(steps=[UserMessage(content="go")])
    with pytest.raises(KeyError, match="oops"):
        async for _ in run(Agent("b", nodes=[Broken("n")]), tape, store=store):
            pass
    assert store.get(tape.id).kinds() == ["user", "reasoning", "node_failure"]
    assert store.status(tape.id) == "error"

    faults.refuse_kind(store, "node_failure")
    other = Tape(steps=[UserMessage(content="go")])
    with pytest.raises(KeyError, match="oops"):
        async for _ in run(Agent("b", nodes=[Broken("n")]), other, store=store):
            pass
    assert store.get(other.id).kinds() == ["user", "store_failure"]
    assert store.status(other.id) == "error"


# ----------------------------------------------------------------------------- refused writes


@pytest.mark.parametrize("write_behind", [False, True], ids=["committed", "write_behind"])
async def test_a_failed_commit_ends_the_run_with_an_error_step(
    store: TapeStore, write_behind: bool
) -> None:
    """The COMMIT of an answer fails: the run ends with status "error" and a `StoreFailure`
    that says so with the database's message, instead of reporting the answer as stored and
    blaming "another process" later (SQLite) or hanging (PostgreSQL)."""
    faults.fail_commit(store, "POISON")
    answers = [thought_and_call("POISON", "add", {"a": 2, "b": 3}), FINAL]
    tape = Tape(steps=[UserMessage(content="2+3?")])
    finished, appended = await drain(
        answers_agent(*answers), tape, store, write_behind=write_behind
    )
    assert finished.reason == "error"
    assert finished.error is not None
    assert database_error(store) in finished.error
    assert "another process" not in finished.error
    assert finished.error.startswith("The store refused steps 1 to 2 (reasoning, tool_call)")
    stored = store.get(tape.id)
    assert stored.kinds() == ["user", "store_failure"]
    assert stored.steps == finished.tape.steps
    assert store.status(tape.id) == "error"
    if not write_behind:  # written behind, steps are reported before they commit (by design)
        assert appended == []


async def test_text_the_database_cannot_hold_ends_the_run_with_an_error_step(
    store: TapeStore,
) -> None:
    """A lone surrogate in a model's tool call cannot be encoded for either database."""
    answers = [thought_and_call("Echo it.", "echo", {"text": "bad \ud800 text"}), FINAL]
    tape = Tape(steps=[UserMessage(content="echo")])
    finished, appended = await drain(answers_agent(*answers), tape, store)
    assert finished.reason == "error"
    assert finished.error is not None and "surrogates not allowed" in finished.error
    assert "another process" not in finished.error
    assert appended == []
    assert store.get(tape.id).kinds() == ["user", "store_failure"]
    assert store.status(tape.id) == "error"


async def test_a_refused_observation_answers_its_action_with_an_error(store: TapeStore) -> None:
    """A tool's result holds a NUL in a long text: PostgreSQL refuses it, so the action gets an
    `ErrorObservation` instead (it was performed: a resume must not perform it again); SQLite
    stores it exactly."""
    answers = [thought_and_call("Get it.", "long_nul", {"n": 5000}), FINAL]
    tape = Tape(steps=[UserMessage(content="go")])
    finished, appended = await drain(answers_agent(*answers), tape, store)
    stored = store.get(tape.id)
    assert stored.steps == finished.tape.steps
    assert_reported_steps_are_stored(store, tape.id, appended)
    if store.engine.dialect.name == "sqlite":
        assert finished.reason == "stopped"
        assert stored.steps[3].content == long_nul(5000)  # type: ignore[attr-defined]
        return
    assert finished.reason == "error"
    assert finished.error is not None and "cannot contain NUL" in finished.error
    assert stored.kinds() == ["user", "reasoning", "tool_call", "error_observation"]
    observation = stored.steps[3]
    assert isinstance(observation, ErrorObservation)
    assert observation.action_id == stored.steps[2].metadata.id
    assert "The action was performed" in observation.error
    assert store.status(tape.id) == "error"
    assert stored.pending_actions() == []  # a resume does not perform it again


@contextmanager
def postgres_small_disk(url: str, size: str) -> Iterator[None]:
    """PostgreSQL: the database at `url` creates its tables on a tmpfs of `size` (a tablespace
    that is the database's `default_tablespace`), so that writing fills a real disk and the
    server fails with "could not extend file ...: No space left on device". WAL stays on the
    server's own disk. Needs root (to mount) and the server on this machine; skips otherwise."""
    if os.geteuid() != 0:
        pytest.skip("a full PostgreSQL disk needs root, to mount a small tmpfs")
    admin = sa.create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            data = connection.execute(sa.text("SHOW data_directory")).scalar_one()
        try:
            owner = os.stat(data)
        except OSError:
            pytest.skip(f"the PostgreSQL server's data directory {data} is not on this machine")
        mount_point = tempfile.mkdtemp(prefix="tapeagents-full-disk-")
        options = f"size={size},mode=0700,uid={owner.st_uid},gid={owner.st_gid}"
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", mount_point],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            os.rmdir(mount_point)
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        space = f"full_disk_{uuid.uuid4().hex[:12]}"
        database = url.rsplit("/", 1)[1]
        try:
            with admin.connect() as connection:
                connection.execute(sa.text(f"CREATE TABLESPACE {space} LOCATION '{mount_point}'"))
                connection.execute(
                    sa.text(f'ALTER DATABASE "{database}" SET default_tablespace = {space}')
                )
            yield
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
                connection.execute(sa.text(f"DROP TABLESPACE IF EXISTS {space}"))
            subprocess.run(["umount", mount_point], check=True)
            os.rmdir(mount_point)
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def full_disk_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TapeStore]:
    """A store on a disk that fills after a few big steps, with the database's own error.
    SQLite: a real SQLITE_FULL (`PRAGMA max_page_count`). PostgreSQL: a real ENOSPC, its tables
    on a 1 MB tmpfs (as root)."""
    if request.param == "sqlite":
        store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
        faults.fill_disk_at(store, 100)
        yield store
        faults.clear(store)
        store.close()
        return
    for url in postgres_database():
        with postgres_small_disk(url, "1m"):
            store = TapeStore(url)
            try:
                yield store
            finally:
                store.close()


def disk_full_error(store: TapeStore) -> str:
    """What the database says when its disk is full."""
    if store.engine.dialect.name == "sqlite":
        return "database or disk is full"
    return "No space left on device"


@pytest.mark.parametrize("write_behind", [False, True], ids=["committed", "write_behind"])
async def test_a_full_disk_ends_the_run_with_an_error_step(
    full_disk_store: TapeStore, write_behind: bool
) -> None:
    """The disk fills up during a run (a real SQLITE_FULL, a real ENOSPC on PostgreSQL): the
    run ends, without hanging, with status "error" and the database's message, every reported
    step is stored, and the failure step too when it still fits. The texts are random, so that
    neither deduplication nor compression keeps them off the disk."""
    store = full_disk_store
    rng = random.Random(14)
    big = [
        thought_and_call(
            f"Thought {i}: " + base64.b64encode(rng.randbytes(48_000)).decode(),
            "add",
            {"a": i, "b": 1},
        )
        for i in range(60)
    ]
    tape = Tape(steps=[UserMessage(content="fill it")])
    finished, appended = await drain(
        answers_agent(*big, FINAL), tape, store, write_behind=write_behind
    )
    assert finished.reason == "error"
    assert finished.error is not None and disk_full_error(store) in finished.error
    assert "another process" not in finished.error
    assert appended, "the disk filled before the first answer: nothing was tried"
    if not write_behind:  # written behind, steps are reported before they commit (by design)
        assert_reported_steps_are_stored(store, tape.id, appended)
    stored = store.get(tape.id)
    assert stored.steps == finished.tape.steps[: len(stored)]
    assert len(stored) >= len(finished.tape) - 1  # the failure step itself may not fit
    assert isinstance(finished.tape.last, StoreFailure | ErrorObservation)
    assert store.status(tape.id) == "error"  # an UPDATE in place still fits
    if len(stored) < len(finished.tape):
        assert "not stored either" in finished.error


async def test_another_process_appending_is_still_a_conflict(store: TapeStore) -> None:
    """A real second writer moves the stored length: that is `StoreConflict` ("another
    process appended"), raised, and the tape is left to that writer."""

    class Intruded(ToolEnvironment):
        async def react(self, action, tape):  # type: ignore[no-untyped-def]
            store.append_steps(tape.id, len(tape), [UserMessage(content="the other writer")])
            return await super().react(action, tape)

    answers = [thought_and_call("Let me add.", "add", {"a": 2, "b": 3}), FINAL]
    tape = Tape(steps=[UserMessage(content="2+3?")])
    with pytest.raises(StoreConflict, match="another process appended"):
        async for _ in run(answers_agent(*answers), tape, Intruded([add]), store=store):
            pass
    stored = store.get(tape.id)
    assert stored.kinds() == ["user", "reasoning", "tool_call", "user"]
    assert isinstance(stored.steps[2], ToolCall)


async def test_a_refused_run_end_ends_the_run_with_an_error(store: TapeStore) -> None:
    """The store takes every step but refuses to record that the run stopped: the run ends
    with "error" and the database's message, the tape keeps all its steps (no failure step
    after the final answer: nothing is missing from it), and its status says "error"."""
    faults.refuse_status(store, "stopped")
    answers = [thought_and_call("Let me add.", "add", {"a": 2, "b": 3}), FINAL]
    tape = Tape(steps=[UserMessage(content="2+3?")])
    finished, appended = await drain(answers_agent(*answers), tape, store)
    assert finished.reason == "error"
    assert finished.error is not None
    assert finished.error.startswith("The store refused to record how the run ended")
    assert "injected fault: status refused" in finished.error
    assert "another process" not in finished.error
    stored = store.get(tape.id)
    assert stored.kinds() == ["user", "reasoning", "tool_call", "tool_result", "final_answer"]
    assert stored.steps == finished.tape.steps
    assert_reported_steps_are_stored(store, tape.id, appended)
    assert len(appended) == 4
    assert store.status(tape.id) == "error"
    assert store.lease_holder(tape.id) is None  # the run gave its tape up
