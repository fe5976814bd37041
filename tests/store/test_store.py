"""TapeStore on SQLite and PostgreSQL: round trips, forks, lineage, queries, upkeep, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tapeagents import (
    Agent,
    AssistantMessage,
    FinalAnswer,
    LLMNode,
    Reasoning,
    StoreError,
    Tape,
    ToolCall,
    ToolEnvironment,
    UnknownStep,
    UsageError,
    UserMessage,
    run_sync,
)
from tapeagents.llms import CachedLLM, LLMCall, LLMOutput, Prompt, ScriptedLLM, tool_call
from tapeagents.store import TapeFilter, TapeStore

LONG = "A long observation that repeats. " * 20  # over the blob threshold


def sample_tape(n: int = 3, **kwargs) -> Tape:
    tape = Tape(steps=[UserMessage(content=LONG)], context={"task": 7}, author="tester", **kwargs)
    for i in range(1, n):
        tape.append(Reasoning(text=f"thought {i}"))
    return tape


def test_saved_tapes_come_back_exactly(store: TapeStore) -> None:
    tape = sample_tape()
    tape.metadata.tags = ["smoke", "nightly"]
    tape.metadata.result = {"score": 1.0}
    store.save(tape, agent="bot")
    loaded = store.get(tape.id)
    assert loaded.model_dump_json() == tape.model_dump_json()
    summary = store.summary(tape.id)
    assert (summary.agent, summary.length, summary.tags) == ("bot", 3, ["nightly", "smoke"])


def test_append_steps_extends_and_detects_concurrent_writers(store: TapeStore) -> None:
    tape = sample_tape(1)
    store.save(tape)
    store.append_steps(tape.id, 1, [Reasoning(text="a"), Reasoning(text="b")])
    assert store.get(tape.id).kinds() == ["user", "reasoning", "reasoning"]
    with pytest.raises(StoreError, match="has 3 stored steps, not 1: another process"):
        store.append_steps(tape.id, 1, [Reasoning(text="late")])
    with pytest.raises(StoreError, match="No tape 'nope'"):
        store.append_steps("nope", 0, [Reasoning(text="x")])


def test_saving_an_edited_tape_is_refused_with_advice(store: TapeStore) -> None:
    tape = sample_tape()
    store.save(tape)
    edited = tape.model_copy(deep=True)
    edited.steps[2] = Reasoning(text="changed")
    with pytest.raises(StoreError, match="Fork it"):
        store.save(edited)
    with pytest.raises(StoreError, match="has 3 steps in the store but 1 here"):
        store.save(Tape(id=tape.id, steps=tape.steps[:1]))


def test_a_run_with_a_store_persists_every_step_and_call(store: TapeStore) -> None:
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    env = ToolEnvironment([add])
    llm = ScriptedLLM(
        [LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 40}')]), LLMOutput(content=LONG)]
    )
    agent = Agent("calc", nodes=[LLMNode(tools=env.tools)], llms=llm)
    result = run_sync(agent, "2+40?", env, store=store)
    stored = store.get(result.tape.id)
    assert stored.model_dump_json() == result.tape.model_dump_json()
    assert store.summary(stored.id).status == "awaiting_input"
    calls = store.llm_calls_of(stored)
    assert [c.id for c in calls] == [stored[1].metadata.llm_call_id, stored[3].metadata.llm_call_id]
    assert calls[1].output.content == LONG and calls[1].prompt == llm.prompts[1]
    # the prompt of the second call and the steps share their long strings in one blob table
    with store.engine.connect() as connection:
        texts = connection.execute(sa.text("SELECT text FROM blobs")).scalars().all()
    assert texts.count(LONG) == 1


def test_unknown_step_kinds_survive_storage(store: TapeStore) -> None:
    tape = Tape.model_validate(
        {"steps": [{"kind": "from_v9", "payload": [1, 2], "metadata": {"id": "s1"}}]}
    )
    store.save(tape)
    loaded = store.get(tape.id)
    assert isinstance(loaded.steps[0], UnknownStep)
    assert json.loads(loaded.model_dump_json())["steps"][0] == {
        "kind": "from_v9",
        "payload": [1, 2],
        "metadata": {"id": "s1"},
    }


def test_fork_shares_the_prefix_and_applies_edits(store: TapeStore) -> None:
    tape = sample_tape(50)
    store.save(tape)
    with store.engine.connect() as connection:
        before = connection.execute(sa.text("SELECT count(*) FROM steps")).scalar()
    child = store.fork(tape, at=40)
    with store.engine.connect() as connection:
        after = connection.execute(sa.text("SELECT count(*) FROM steps")).scalar()
    assert after == before  # nothing copied
    assert store.get(child.id).steps == tape.steps[:40]
    edited = store.fork(tape.id, at=10, edits={5: Reasoning(text="better")}, author="me")
    loaded = store.get(edited.id)
    assert loaded.steps[5].text == "better" and loaded.steps[:5] == tape.steps[:5]  # type: ignore[attr-defined]
    assert (loaded.parent_id, loaded.fork_index, loaded.author) == (tape.id, 10, "me")
    # a grandchild reads through two levels of shared prefixes
    grandchild = store.fork(edited.id, at=8)
    assert store.get(grandchild.id).steps == loaded.steps[:8]
    assert [a.id for a in store.ancestors(grandchild.id)] == [edited.id, tape.id]
    assert {c.id for c in store.children(tape.id)} == {child.id, edited.id}
    tree = store.tree(grandchild.id)
    assert tree.tape.id == tape.id and len(tree.children) == 2
    with pytest.raises(StoreError, match="at step 51: it has 50 steps"):
        store.fork(tape.id, at=51)
    with pytest.raises(StoreError, match="outside the forked steps"):
        store.fork(tape.id, at=3, edits={4: Reasoning(text="x")})


def test_a_forked_tape_can_be_run_and_keeps_its_parent(store: TapeStore) -> None:
    agent = Agent("echo", nodes=[LLMNode()], llms=ScriptedLLM(lambda p: p.messages[-1]["content"]))
    first = run_sync(agent, "one", store=store).tape
    child = store.fork(first, at=1, edits={0: UserMessage(content="two")})
    resumed = run_sync(agent, child, store=store).tape
    assert store.get(resumed.id).kinds() == ["user", "assistant"]
    assert store.get(resumed.id).steps[1].content == "two"  # type: ignore[attr-defined]
    assert store.get(first.id).steps[1].content == "one"  # type: ignore[attr-defined]


def test_deleting_a_parent_keeps_its_forks_whole(store: TapeStore) -> None:
    tape = sample_tape(6)
    store.save(tape)
    child = store.fork(tape, at=4)
    assert store.delete([tape.id]) == 1
    assert store.get(child.id).steps == tape.steps[:4]
    with pytest.raises(StoreError, match="No tape"):
        store.get(tape.id)


def test_list_filters_and_paginates(store: TapeStore) -> None:
    ids = []
    for i in range(7):
        tape = sample_tape(2)
        tape.metadata.tags = ["even"] if i % 2 == 0 else ["odd"]
        tape.append(AssistantMessage(content=f"needle-{i}"))
        store.save(tape, agent="a" if i < 5 else "b", status="stopped" if i < 3 else "error")
        ids.append(tape.id)
        time.sleep(0.002)
    assert store.count() == 7
    assert [s.id for s in store.list(limit=3)] == ids[::-1][:3]  # newest first
    assert [s.id for s in store.list(limit=3, offset=6)] == [ids[0]]
    assert store.count(TapeFilter(agent="b")) == 2
    assert store.count(TapeFilter(status="stopped")) == 3
    assert store.count(TapeFilter(tag="even")) == 4
    assert store.count(TapeFilter(tag="even", agent="b")) == 1
    assert [s.id for s in store.list(TapeFilter(text="needle-4"))] == [ids[4]]
    assert store.count(TapeFilter(text="repeats. A long")) == 7  # found inside a blob
    assert store.count(TapeFilter(since=time.time() + 60)) == 0
    assert store.delete_where(TapeFilter(tag="odd")) == 3 and store.count() == 4
    assert store.count(TapeFilter(until=time.time() + 60, agent="a")) == 3
    with pytest.raises(UsageError, match="Say which tapes to delete"):
        store.delete_where(TapeFilter())


def test_a_tape_filter_also_judges_a_stored_header(store: TapeStore) -> None:
    tape = sample_tape(1)
    tape.metadata.tags, tape.metadata.task_id = ["nightly"], "t1"
    store.save(tape, agent="calc", status="stopped")
    summary = store.summary(tape.id)
    for matching in (TapeFilter(), TapeFilter(agent="calc", tag="nightly", task_id="t1")):
        assert matching.matches(summary) and store.count(matching) == 1
    for missing in (TapeFilter(agent="other"), TapeFilter(tag="weekly", status="stopped")):
        assert not missing.matches(summary) and store.count(missing) == 0
    assert TapeFilter().is_empty and not TapeFilter(tag="x").is_empty
    assert repr(TapeFilter(agent="calc", tag="x")) == "TapeFilter(agent='calc', tag='x')"
    with pytest.raises(UsageError, match="text filter"):
        TapeFilter(text="x").matches(summary)


def test_task_outcome_and_reward_are_stored_and_filterable(store: TapeStore) -> None:
    won, lost = sample_tape(2), sample_tape(2)
    won.metadata.task_id, won.metadata.outcome, won.metadata.reward = "t1", "success", 1.0
    store.save(won, status="stopped")
    store.save(lost, status="running")
    lost.metadata.task_id, lost.metadata.outcome, lost.metadata.reward = "t2", "failure", 0.0
    store.set_status(lost.id, "stopped", metadata=lost.metadata)
    assert [s.id for s in store.list(TapeFilter(outcome="success"))] == [won.id]
    assert [s.id for s in store.list(TapeFilter(task_id="t2"))] == [lost.id]
    summary = store.summary(lost.id)
    assert (summary.task_id, summary.outcome, summary.reward) == ("t2", "failure", 0.0)
    assert store.get(won.id).metadata.reward == 1.0


def test_annotations_are_kept_per_step_and_go_with_their_tape(store: TapeStore) -> None:
    tape = sample_tape(3)
    store.save(tape)
    good = store.annotate(tape.id, 1, rating=1, label="good", author="ana")
    store.annotate(tape.id, comment="whole tape looks fine")
    notes = store.annotations(tape.id)
    assert [(n.step_index, n.rating, n.label, n.comment) for n in notes] == [
        (1, 1.0, "good", None),
        (None, None, None, "whole tape looks fine"),
    ]
    with pytest.raises(UsageError, match="no step 3"):
        store.annotate(tape.id, 3, rating=1)
    with pytest.raises(UsageError, match="needs a rating"):
        store.annotate(tape.id, 0)
    with pytest.raises(StoreError, match="No tape"):
        store.annotate("missing", 0, label="x")
    store.delete_annotation(good.id)
    assert len(store.annotations(tape.id)) == 1
    store.delete([tape.id])
    assert store.annotations(tape.id) == []


def test_a_store_from_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    from alembic import command

    from tapeagents.store.migrate import alembic_config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = TapeStore(url, upgrade=False)
    with store.engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.execute(
            sa.text(
                "INSERT INTO tapes (id, prefix_length, status, created_at, updated_at, length) "
                "VALUES ('old', 0, 'stopped', 1, 1, 0)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO llm_calls (id, model, prompt, output, created_at) "
                """VALUES ('call', 'm', '{"messages":[]}', '{"content":"hi"}', 1)"""
            )
        )
    store.close()
    store = TapeStore(url)
    assert store.summary("old").outcome is None
    store.annotate("old", label="kept from 0001")
    (call,) = store.get_llm_calls(["call"])
    assert call.output.content == "hi" and call.retries == 0
    store.close()


def test_llm_calls_keep_their_retries(store: TapeStore) -> None:
    prompt = Prompt(messages=[{"role": "user", "content": "q"}])
    call = LLMCall(id="c1", model="m", prompt=prompt, output=LLMOutput(content="a"), retries=2)
    store.save_llm_calls([call])
    assert store.get_llm_calls(["c1"]) == [call]


def test_export_import_round_trip(store: TapeStore, tmp_path: Path) -> None:
    agent = Agent("x", nodes=[LLMNode()], llms=ScriptedLLM(["hello " * 100]))
    original = run_sync(agent, "hi", store=store).tape
    forked = store.fork(original, at=1)
    path = tmp_path / "tapes.jsonl"
    assert store.export_jsonl(path) == 2
    other = TapeStore(f"sqlite:///{tmp_path / 'other.db'}")
    assert other.import_jsonl(path) == 2
    assert other.get(original.id).model_dump_json() == original.model_dump_json()
    assert other.get(forked.id).parent_id == original.id
    assert [c.id for c in other.llm_calls_of(original)] == [
        c.id for c in store.llm_calls_of(original)
    ]
    assert other.import_jsonl(path) == 0  # already there
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tape": {"steps": []}}\nnot json\n')
    with pytest.raises(StoreError, match="line 2: not a tape record"):
        other.import_jsonl(bad)


def test_stored_calls_serve_as_an_llm_cache(store: TapeStore) -> None:
    agent = Agent("c", nodes=[LLMNode()], llms=ScriptedLLM(["cached answer"]))
    result = run_sync(agent, "q", store=store)
    replaying = CachedLLM(ScriptedLLM([]), store.llm_cache())
    (call,) = store.llm_calls_of(result.tape)
    output = __import__("asyncio").run(replaying.generate(call.prompt))
    assert output.content == "cached answer" and replaying.hits == 1


def test_a_corrupt_row_is_reported_with_its_place(store: TapeStore) -> None:
    tape = sample_tape(3)
    store.save(tape)
    with store.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE steps SET data = '{broken' WHERE tape_id = :id AND idx = 1"),
            {"id": tape.id},
        )
    with pytest.raises(StoreError, match=f"Tape {tape.id} cannot be read: step 1 .*Invalid JSON"):
        store.get(tape.id)


def test_batched_reads_report_a_corrupt_row_when_its_tape_is_reached(store: TapeStore) -> None:
    good, bad = sample_tape(3), sample_tape(3)
    store.save(good)
    store.save(bad)
    with store.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE steps SET data = '{broken' WHERE tape_id = :id AND idx = 2"),
            {"id": bad.id},
        )
    tapes = store.iter_tapes([good.id, bad.id])
    assert next(tapes).steps == good.steps  # the tapes before it are read
    with pytest.raises(StoreError, match=f"Tape {bad.id} cannot be read: step 2 "):
        next(tapes)


def test_resolve_id_accepts_unique_prefixes(store: TapeStore) -> None:
    first, second = Tape(id="abc123"), Tape(id="abd456")
    store.save(first)
    store.save(second)
    assert store.resolve_id("abc") == "abc123"
    with pytest.raises(StoreError, match="Several tapes start with 'ab'"):
        store.resolve_id("ab")


def test_schema_is_migrated_on_open_and_matches_the_models(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from tapeagents.store.schema import SCHEMA_VERSION, metadata

    store = TapeStore(store_url)
    assert store.schema_revision() == SCHEMA_VERSION
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == []
    store.close()


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(
        StoreError,
        match="Cannot open the tape store at postgresql\\+psycopg://u:\\*\\*\\*@127.0.0.1:1/x",
    ):
        TapeStore("postgresql+psycopg://u:secret@127.0.0.1:1/x")


def test_stopped_tapes_record_their_status_and_result(store: TapeStore) -> None:
    class Done(__import__("tapeagents").Node):
        async def generate(self, agent, tape):
            tape.metadata.result = "42"
            yield FinalAnswer(answer="42")

    result = run_sync(Agent("d", nodes=[Done("n")]), "q", store=store)
    assert store.summary(result.tape.id).status == "stopped"
    assert store.get(result.tape.id).metadata.result == "42"


def test_a_run_resumed_after_a_crash_marks_unanswered_actions_interrupted(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="go")])
    call = ToolCall(name="charge_card", arguments={"amount": 10})
    call.metadata.agent = "shop"
    tape.append(call)
    store.save(tape, status="running", agent="shop")  # as a killed run leaves it
    agent = Agent("shop", nodes=[LLMNode()], llms=ScriptedLLM(["I could not finish the payment."]))
    result = run_sync(agent, store.get(tape.id), ToolEnvironment([]), store=store)
    assert result.tape.kinds() == ["user", "tool_call", "error_observation", "assistant"]
    assert "Interrupted" in result.tape[2].error  # type: ignore[attr-defined]
    assert result.tape[2].action_id == call.metadata.id  # type: ignore[attr-defined]
    assert store.get(tape.id).kinds() == result.tape.kinds()


def test_a_locked_sqlite_database_makes_writers_wait_not_fail(tmp_path: Path) -> None:
    import sqlite3
    import threading

    path = tmp_path / "locked.db"
    store = TapeStore(f"sqlite:///{path}")
    tape = sample_tape(1)
    store.save(tape)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.perf_counter()
    store.append_steps(tape.id, 1, [Reasoning(text="after the lock")])
    waited = time.perf_counter() - started
    release.join()
    holder.close()
    assert waited >= 0.4
    assert store.get(tape.id).kinds() == ["user", "reasoning"]
    store.close()


def test_the_store_package_exports_its_public_names() -> None:
    import tapeagents.store

    assert set(tapeagents.store.__all__) == {
        "DEFAULT_URL",
        "Annotation",
        "TapeFilter",
        "TapeStore",
        "TapeSummary",
        "TapeTree",
    }
    for name in tapeagents.store.__all__:
        assert getattr(tapeagents.store, name) is not None
