"""Damaged data in a real store: rows changed with raw SQL, as a disk fault, a bad restore or a
hand edit would leave them, on SQLite and PostgreSQL.

Every case is one error of one line that names the tape (or the file) and says what to do;
reading many tapes can skip an unreadable one and go on, and a JSONL export writes every other
tape before it reports the ones it left out.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tapeagents import Tape, UserMessage
from tapeagents.errors import CorruptTapeError, StoreError, UnreadableTapesError
from tapeagents.llms import LLMCall, LLMOutput, Prompt
from tapeagents.steps import UnknownStep
from tapeagents.store import TapeStore
from tapeagents.store.blobs import BLOB_MIN_LENGTH
from tapeagents.store.migrate import foreign_tables
from tapeagents.store.rows import CorruptCallError
from tests.export.agents import calc_agent, solve

LONG = "a long question " * (BLOB_MIN_LENGTH // 8)


@pytest.fixture
def tapes(store: TapeStore) -> list[Tape[Any, Any]]:
    """Three calculator runs: user, reasoning + tool call (one LLM call), result, answer."""
    agent = calc_agent()
    return [solve(store, agent, a, 1) for a in range(3)]


def damage(store: TapeStore, sql: str, **params: Any) -> None:
    """Change the store's rows behind its back."""
    with store.engine.begin() as connection:
        connection.execute(sa.text(sql), params)


def one_line(error: BaseException | pytest.ExceptionInfo[Any], *parts: str) -> str:
    """The error's message, checked to be one line holding every part."""
    text = str(error.value if isinstance(error, pytest.ExceptionInfo) else error)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"
    return text


def assert_unreadable(
    store: TapeStore, tapes: list[Tape[Any, Any]], bad: Tape[Any, Any], *parts: str
) -> CorruptTapeError:
    """`get` and batched reads name the tape and what to do; the other tapes still read, and
    a batched read told to skip hands out all the others."""
    with pytest.raises(CorruptTapeError) as raised:
        store.get(bad.id)
    one_line(raised, f"Tape {bad.id} cannot be read: ", *parts, f"`tapeagents rm {bad.id}`")
    assert raised.value.tape_id == bad.id
    good = [t for t in tapes if t.id != bad.id]
    for tape in good:
        assert store.get(tape.id).steps == tape.steps
    with pytest.raises(CorruptTapeError, match=f"Tape {bad.id} cannot be read"):
        list(store.iter_tapes([t.id for t in tapes]))
    skipped: list[CorruptTapeError] = []
    read = list(store.iter_tapes([t.id for t in tapes], batch_size=2, on_unreadable=skipped.append))
    assert [t.id for t in read] == [t.id for t in good]
    assert [e.tape_id for e in skipped] == [bad.id]
    return raised.value


STEP_CASES = [
    # (kind, data, what the message says); step 1 is a reasoning step
    ("alien", "[]", "step 1 has the unknown kind 'alien' and holds a JSON array where"),
    ("alien", '"x"', "step 1 has the unknown kind 'alien' and holds a JSON string where"),
    ("alien", "null", "step 1 has the unknown kind 'alien' and holds null where"),
    ("alien", "5", "step 1 has the unknown kind 'alien' and holds the JSON value 5 where"),
    ("alien", "{broken", "step 1 (alien) is corrupt: invalid JSON: Expecting property name"),
    (None, "{broken", "step 1 (reasoning) is corrupt: Invalid JSON: key must be a string"),
    (None, "[]", "step 1 (reasoning) is corrupt: Input should be an object"),
    (None, '{"text": 5}', "step 1 (reasoning) is corrupt: text: Input should be a valid string"),
    (None, '{"text": "t", "metadata": 5}', "step 1 (reasoning) is corrupt: metadata: Input"),
]


@pytest.mark.parametrize(("kind", "data", "reason"), STEP_CASES)
def test_a_damaged_step_row_names_the_tape_and_the_step(
    store: TapeStore, tapes: list[Tape[Any, Any]], kind: str | None, data: str, reason: str
) -> None:
    bad = tapes[1]
    damage(
        store,
        "UPDATE steps SET kind = COALESCE(:kind, kind), data = :data "
        "WHERE tape_id = :id AND idx = 1",
        kind=kind,
        data=data,
        id=bad.id,
    )
    error = assert_unreadable(store, tapes, bad, reason)
    assert error.step_index == 1


def test_an_unknown_kind_with_object_data_loads_as_a_generic_step_and_keeps_it(
    store: TapeStore, tapes: list[Tape[Any, Any]]
) -> None:
    tape = tapes[0]
    data = {"text": "from a newer tapeagents", "extra": [1, {"x": None}]}
    damage(
        store,
        "UPDATE steps SET kind = 'plan_v9', data = :data WHERE tape_id = :id AND idx = 1",
        data=json.dumps(data),
        id=tape.id,
    )
    step = store.get(tape.id).steps[1]
    assert isinstance(step, UnknownStep) and step.kind == "plan_v9"
    assert step.model_dump(mode="json") == {"kind": "plan_v9", **data}
    (batched,) = store.iter_tapes([tape.id])
    assert batched.steps[1].model_dump(mode="json") == step.model_dump(mode="json")


def test_a_missing_blob_names_the_tape_and_the_step(
    store: TapeStore, tapes: list[Tape[Any, Any]]
) -> None:
    long = Tape(steps=[UserMessage(content="short"), UserMessage(content=LONG)])
    store.save(long)
    damage(store, "DELETE FROM blobs")
    error = assert_unreadable(
        store, [*tapes, long], long, "step 1 refers to the long text ", "missing from the blobs"
    )
    assert re.search(r"long text [0-9a-f]{32}", str(error)) and error.step_index == 1


def test_a_missing_or_foreign_step_row_names_the_tape(
    store: TapeStore, tapes: list[Tape[Any, Any]]
) -> None:
    bad = tapes[2]
    damage(store, "DELETE FROM steps WHERE tape_id = :id AND idx = 3", id=bad.id)
    assert_unreadable(store, tapes, bad, "it should have 5 steps but the store has 4 of them")


def test_a_damaged_header_names_the_tape(store: TapeStore, tapes: list[Tape[Any, Any]]) -> None:
    bad = tapes[0]
    damage(store, "UPDATE tapes SET metadata = '{broken' WHERE id = :id", id=bad.id)
    assert_unreadable(store, tapes, bad, "its header is corrupt (Invalid JSON")


def test_a_fork_reading_a_damaged_shared_step_names_the_fork_and_its_ancestor(
    store: TapeStore, tapes: list[Tape[Any, Any]]
) -> None:
    parent = tapes[0]
    child = store.fork(parent, at=3)
    damage(store, "UPDATE steps SET data = '[]' WHERE tape_id = :id AND idx = 1", id=parent.id)
    with pytest.raises(CorruptTapeError) as raised:
        store.get(child.id)
    one_line(
        raised, f"Tape {child.id} cannot be read: step 1 (stored with its ancestor {parent.id})"
    )
    skipped: list[CorruptTapeError] = []
    ids = [parent.id, child.id, tapes[1].id]
    read = list(store.iter_tapes(ids, on_unreadable=skipped.append))
    assert [t.id for t in read] == [tapes[1].id]
    assert [(e.tape_id, e.step_index) for e in skipped] == [(parent.id, 1), (child.id, 1)]


CALL_CASES = [
    ("output", "{broken", "has a corrupt prompt or output (invalid JSON: Expecting property"),
    ("output", "[1, 2]", "has a corrupt row (Input should be a valid dictionary"),
    ("prompt", '{"messages": 5}', "has a corrupt row (messages: Input should be a valid list)"),
    ("logprobs", "{broken", "has a corrupt row (invalid JSON: Expecting property name"),
    ("logprobs", "[5]", "has a corrupt row (Input should be a valid dictionary"),
    ("parameters", "[1]", "has a corrupt row (parameters: Input should be a valid dictionary)"),
]


@pytest.mark.parametrize(("column", "value", "reason"), CALL_CASES)
def test_a_damaged_llm_call_row_names_the_tape_the_step_and_the_call(
    store: TapeStore, tapes: list[Tape[Any, Any]], column: str, value: str, reason: str
) -> None:
    bad = tapes[1]
    call_id = bad.steps[1].metadata.llm_call_id
    assert call_id is not None
    damage(store, f"UPDATE llm_calls SET {column} = :value WHERE id = :id", value=value, id=call_id)
    with pytest.raises(CorruptTapeError) as raised:
        store.llm_calls_of(bad)
    one_line(raised, f"Tape {bad.id} cannot be read: step 1 was made by the LLM call {call_id}, ")
    one_line(raised, f"which {reason}")
    assert raised.value.step_index == 1
    with pytest.raises(CorruptCallError) as by_id:
        store.get_llm_calls([call_id])
    one_line(by_id, f"The LLM call {call_id} cannot be read: it {reason}")
    assert store.get(bad.id).steps == bad.steps  # the steps themselves still read
    assert len(store.llm_calls_of(tapes[0])) == 2


def test_an_llm_call_whose_blob_is_missing_names_the_call(store: TapeStore) -> None:
    prompt = Prompt(messages=[{"role": "user", "content": LONG}])
    store.save_llm_calls([LLMCall(id="c1", model="m", prompt=prompt, output=LLMOutput())])
    damage(store, "DELETE FROM blobs")
    with pytest.raises(CorruptCallError) as raised:
        store.get_llm_calls(["c1"])
    one_line(raised, "The LLM call c1 cannot be read: it refers to the long text ", "missing")


def test_errors_survive_pickling_for_worker_processes() -> None:
    error = CorruptTapeError("t1", "step 2 (x) is corrupt: y", 2)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.tape_id, copy.reason, copy.step_index, str(copy)) == (
        "t1",
        "step 2 (x) is corrupt: y",
        2,
        str(error),
    )
    many = pickle.loads(pickle.dumps(UnreadableTapesError(3, [error], "out.jsonl")))
    assert many.written == 3 and many.unreadable[0].tape_id == "t1"
    call = pickle.loads(pickle.dumps(CorruptCallError("c1", "has a corrupt row (z)")))
    assert str(call).startswith("The LLM call c1 cannot be read: it has a corrupt row (z).")


# ----------------------------------------------------------------------------- the database


def set_revision(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    engine.dispose()


def test_a_store_written_by_a_newer_tapeagents_says_upgrade(store_url: str) -> None:
    TapeStore(store_url).close()
    set_revision(store_url, "9999")
    with pytest.raises(StoreError) as raised:
        TapeStore(store_url)
    one_line(raised, "was written by a newer tapeagents (schema revision 9999; this one knows")
    one_line(raised, "upgrade tapeagents (pip install -U tapeagents)")
    with TapeStore(store_url, upgrade=False) as store:  # opening without upgrading still works
        assert store.schema_revision() == "9999"


def test_another_applications_alembic_revision_is_not_taken_for_a_tape_store(
    store_url: str,
) -> None:
    TapeStore(store_url).close()
    set_revision(store_url, "ae1027a6acf")
    with pytest.raises(StoreError) as raised:
        TapeStore(store_url)
    one_line(raised, "is not a tape store: it is at the Alembic revision 'ae1027a6acf' of another")


def test_another_applications_tables_are_named(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE users (id INTEGER)"))
    engine.dispose()
    with TapeStore(store_url, upgrade=False) as store:
        assert foreign_tables(store.database) == ["users"]
        store.upgrade()  # the API may add a tape store beside them, as asked
        assert foreign_tables(store.database) == []


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "random.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError) as raised:
        TapeStore(f"sqlite:///{path}")
    one_line(raised, f"Cannot open the tape store at sqlite:///{path}: ", "file is not a database")
    one_line(raised, "Check that the file is a tape store (a SQLite database)")


def test_a_tape_store_file_cut_short_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "tapes.db"
    with TapeStore(f"sqlite:///{path}") as store:
        store.save(Tape(steps=[UserMessage(content="hi")]))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    path.write_bytes(path.read_bytes()[:1000])  # the header survives, the pages do not
    with pytest.raises(StoreError) as raised:
        with TapeStore(f"sqlite:///{path}") as store:
            store.list()
    one_line(raised, str(path))


# ----------------------------------------------------------------------------- JSONL files


def test_export_jsonl_writes_every_readable_tape_and_names_the_others(
    store: TapeStore, tapes: list[Tape[Any, Any]], tmp_path: Path
) -> None:
    damage(store, "UPDATE steps SET data = 'null' WHERE tape_id = :id AND idx = 2", id=tapes[0].id)
    call_id = tapes[2].steps[4].metadata.llm_call_id
    damage(store, "UPDATE llm_calls SET output = '{' WHERE id = :id", id=call_id)
    path = tmp_path / "tapes.jsonl"
    with pytest.raises(UnreadableTapesError) as raised:
        store.export_jsonl(path)
    one_line(raised, f"Wrote 1 tapes to {path} but left out 2 that cannot be read")
    one_line(raised, f"({tapes[0].id}, {tapes[2].id})", "`tapeagents rm`")
    assert raised.value.written == 1
    assert [e.step_index for e in raised.value.unreadable] == [2, 4]
    with TapeStore(f"sqlite:///{tmp_path / 'other.db'}") as other:
        assert other.import_jsonl(path) == 1
        assert other.get(tapes[1].id).steps == tapes[1].steps


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"{not json", "invalid JSON: Expecting property name"),
        (b"[1, 2]", "a JSON object with a 'tape' field was expected"),
        (b'{"tape": {"steps": [{"kind": "user", "content": 5}]}}', "steps.content: Input"),
        (b'{"tape": {"steps": [5]}}', "steps.0: Input should be a valid dictionary"),
        (b'{"tape": {"steps": []}, "llm_calls": [{"id": 1}]}', "id: Input should be a valid"),
        (b"\xff\xfe not text", "'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_import_of_a_damaged_jsonl_line_names_the_file_and_the_line(
    store: TapeStore, tapes: list[Tape[Any, Any]], tmp_path: Path, line: bytes, reason: str
) -> None:
    good = tmp_path / "good.jsonl"
    store.export_jsonl(good, [tapes[0].id])
    path = tmp_path / "damaged.jsonl"
    path.write_bytes(good.read_bytes() + b"\n" + line + b"\n")
    with TapeStore(f"sqlite:///{tmp_path / 'other.db'}") as other:
        with pytest.raises(StoreError) as raised:
            other.import_jsonl(path)
        one_line(raised, f"{path}, line 3: not a tape record ({reason}")
        one_line(raised, "The lines before it were imported (1 new tape); fix or remove this line")
        assert other.get(tapes[0].id).steps == tapes[0].steps
