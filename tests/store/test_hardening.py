"""The store against hostile content and crashes: content that looks like stored structure,
search text with LIKE wildcards, quotes and backslashes, and store creation killed or raced."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapeagents import Reasoning, Tape, ToolCall, UserMessage
from tapeagents.llms import LLMCall, LLMOutput, Prompt
from tapeagents.store import TapeFilter, TapeStore
from tapeagents.store.blobs import BLOB_MIN_LENGTH
from tapeagents.store.schema import SCHEMA_VERSION

HASH = "0123456789abcdef0123456789abcdef"
LONG = "x" * BLOB_MIN_LENGTH


def round_trip(store: TapeStore, tape: Tape) -> None:
    """Save the tape, then check that both read paths give it back exactly."""
    store.save(tape)
    assert store.get(tape.id).model_dump() == tape.model_dump()
    (read,) = store.iter_tapes([tape.id])
    assert read.model_dump() == tape.model_dump()


# ---- item 3: content never taken for a blob reference ------------------------------------

LOOKALIKES: list[Any] = [
    {"$blob": HASH},  # once unreadable: a reference to no blob
    {"$blob": "not a hash"},
    {"$$blob": HASH},  # the escape itself
    {"$$$blob": {"$blob": HASH}},
    {"$blob": HASH, "other": 1},
    [{"$blob": HASH}, {"$blob": LONG}, LONG],
    {"$blob": {"$blob": LONG}},
    'a string that reads {"$blob":"0123456789abcdef0123456789abcdef"}',
    {'x"': {"$blob": HASH}, "y,": {"$$blob": "z"}},
]


@pytest.mark.parametrize("value", LOOKALIKES, ids=range(len(LOOKALIKES)))
def test_content_that_looks_like_a_blob_reference_round_trips(store: TapeStore, value: Any) -> None:
    call = ToolCall(name="write", arguments={"value": value, "$blob": HASH})
    call.metadata.extra = {"$blob": HASH, "kept": value}
    round_trip(store, Tape(steps=[UserMessage(content=LONG), call]))


def test_content_naming_a_stored_blob_is_not_replaced_by_its_text(store: TapeStore) -> None:
    """A model that writes the hash of a stored long text gets its own object back."""
    from tapeagents.store.blobs import externalize

    found: dict[str, str] = {}
    externalize(LONG, found)
    (stored_hash,) = found
    first = Tape(steps=[UserMessage(content=LONG)])
    store.save(first)
    call = ToolCall(name="echo", arguments={"ref": {"$blob": stored_hash}})
    round_trip(store, Tape(steps=[call]))


def test_llm_calls_with_lookalike_content_round_trip(store: TapeStore) -> None:
    prompt = Prompt(
        messages=[{"role": "user", "content": LONG, "$blob": HASH, "x": {"$blob": HASH}}],
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"$$blob": 1}}}],
    )
    call = LLMCall(id="c1", model="m", prompt=prompt, output=LLMOutput(content='{"$blob": 1}'))
    step = Reasoning(text="t")
    step.metadata.llm_call_id = call.id
    store.save(Tape(steps=[step]), llm_calls=[call])
    (loaded,) = store.get_llm_calls([call.id])
    assert loaded.prompt == prompt
    assert loaded.output.content == call.output.content


def test_rows_written_before_the_escape_still_read(tmp_path: Path) -> None:
    """Old rows hold real references as `{"$blob": hash}`, content's `$blob` keys unescaped."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = TapeStore(url)
    text = "y" * BLOB_MIN_LENGTH
    expected = ToolCall(name="t", arguments={"text": text, "n": {"$blob": "short"}})
    tape = Tape(steps=[expected])
    store.save(tape)
    old_hash = "f" * 32
    old_data = expected.model_dump(mode="json", exclude_defaults=True)
    old_data["arguments"]["text"] = {"$blob": old_hash}
    with store.engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO blobs VALUES (:h, :t)"), {"h": old_hash, "t": text})
        connection.execute(
            sa.text("UPDATE steps SET data = :d WHERE tape_id = :t"),
            {"d": json.dumps(old_data, separators=(",", ":")), "t": tape.id},
        )
    assert store.get(tape.id).model_dump() == tape.model_dump()
    store.close()


JSON_KEYS = st.one_of(st.sampled_from(["$blob", "$$blob", "$$$blob", "blob", "$", ""]), st.text())
JSON_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"])),
    st.sampled_from([HASH, LONG, LONG + '"\\', '{"$blob":"' + HASH + '"}']),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | JSON_TEXT
    | st.builds(  # lookalikes of a blob reference, often
        lambda key, value: {key: value},
        st.sampled_from(["$blob", "$$blob"]),
        st.sampled_from([HASH, LONG]) | JSON_TEXT,
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_KEYS, children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = TapeStore(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'tapes.db'}")
    yield store
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arguments=st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=4), extra=JSON_VALUES)
def test_any_json_a_model_writes_round_trips(
    sqlite_store: TapeStore, arguments: dict[str, Any], extra: Any
) -> None:
    call = ToolCall(name="tool", arguments=arguments)
    call.metadata.extra = {"value": extra}
    round_trip(sqlite_store, Tape(steps=[call]))


# ---- item 11: search matches literal text -----------------------------------------------

NEEDLES = ["100%", "a_b", "back\\slash", "it's", 'say "hi"', "tape_id", "created_at", "!x", "\n"]


def test_search_matches_literal_text_whatever_characters_it_holds(store: TapeStore) -> None:
    plain = Tape(steps=[UserMessage(content="nothing special here at all")])
    store.save(plain)
    holders = {}
    for needle in NEEDLES:
        tape = Tape(steps=[UserMessage(content=f"before {needle} after")])
        store.save(tape)
        holders[needle] = tape.id
    long_tape = Tape(steps=[UserMessage(content=LONG + ' 50% of "it\'s" \\ _')])
    store.save(long_tape)
    for needle, tape_id in holders.items():
        found = {s.id for s in store.list(TapeFilter(text=needle))}
        expected = {tape_id}
        if needle in long_tape.steps[0].content:  # type: ignore[attr-defined]
            expected.add(long_tape.id)
        assert found == expected, needle
        assert store.count(TapeFilter(text=needle)) == len(expected)
    for wildcard in ["%", "_", "\\", "'", '"']:
        found = {s.id for s in store.list(TapeFilter(text=wildcard))}
        assert plain.id not in found and long_tape.id in found, wildcard
    assert store.count(TapeFilter(text="metadata")) == 0  # a key of every step's JSON
    assert store.count(TapeFilter(text="content")) == 0
    assert store.count(TapeFilter(text=HASH[:8])) == 0


def test_search_does_not_match_blob_hashes_or_escaped_keys(store: TapeStore) -> None:
    from tapeagents.store.blobs import externalize

    found: dict[str, str] = {}
    externalize(LONG, found)
    (stored_hash,) = found
    store.save(Tape(steps=[UserMessage(content=LONG), ToolCall(name="t", arguments={"$blob": 1})]))
    assert store.count(TapeFilter(text=stored_hash[:10])) == 0
    assert store.count(TapeFilter(text="$blob")) == 0
    assert store.count(TapeFilter(text="xxxx")) == 1  # in the long text


def test_search_for_a_nul_finds_it(store: TapeStore) -> None:
    tape = Tape(steps=[UserMessage(content="a\0b")])
    store.save(tape)
    store.save(Tape(steps=[UserMessage(content="a b")]))
    written = Tape(steps=[UserMessage(content="a\\u0000b \\\0")])  # a backslash, then u0000
    store.save(written)
    assert [s.id for s in store.list(TapeFilter(text="a\0b"))] == [tape.id]
    assert [s.id for s in store.list(TapeFilter(text="a\\u0000b"))] == [written.id]


# ---- item 5: creating a store is atomic and safe under concurrent first opens -------------

FORK = multiprocessing.get_context("fork")


def _open_and_use(url: str, start: Any, results: Any) -> None:
    start.wait()
    try:
        store = TapeStore(url)
        store.save(Tape(steps=[UserMessage(content="hello")]))
        store.close()
        results.put("ok")
    except Exception as error:  # reported to the test, which shows it
        results.put(repr(error))


def test_concurrent_first_opens_all_succeed_with_one_schema(store_url: str) -> None:
    start, results = FORK.Event(), FORK.Queue()
    children = [
        FORK.Process(target=_open_and_use, args=(store_url, start, results)) for _ in range(8)
    ]
    for child in children:
        child.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert outcomes == ["ok"] * 8
    store = TapeStore(store_url)
    assert store.schema_revision() == SCHEMA_VERSION
    assert store.count() == 8
    store.close()


def _create(url: str, kill_after: int | None, counted: Any = None) -> None:
    """Create the store; SIGKILL this process after its `kill_after`-th SQL statement, or
    report how many statements creation takes."""
    from sqlalchemy import Engine, event

    executed = 0

    def after_statement(*_: Any) -> None:
        nonlocal executed
        executed += 1
        if executed == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    event.listen(Engine, "after_cursor_execute", after_statement)
    TapeStore(url).close()
    if counted is not None:
        counted.put(executed)
        counted.close()
        counted.join_thread()  # flushed before the process ends without cleanup
    os._exit(0)


def _reopen_after(url: str, child: Any) -> None:
    child.join()
    store = TapeStore(url)
    tape = Tape(steps=[UserMessage(content="after the kill")])
    store.save(tape)
    assert store.get(tape.id).model_dump() == tape.model_dump()
    assert store.schema_revision() == SCHEMA_VERSION
    store.close()


def _statements_and_time(tmp_path: Path) -> tuple[int, float]:
    """How many SQL statements creating a store takes, and how long a creation lasts."""
    import alembic.command  # noqa: F401  (loaded before forking, so children start at once)

    counted = FORK.Queue()
    child = FORK.Process(target=_create, args=(f"sqlite:///{tmp_path / 't.db'}", None, counted))
    began = time.perf_counter()
    child.start()
    child.join()
    return counted.get(timeout=10), time.perf_counter() - began


@pytest.mark.parametrize("every", [4, pytest.param(1, marks=pytest.mark.slow)])
def test_a_store_killed_after_any_statement_of_its_creation_opens_and_works(
    tmp_path: Path, every: int
) -> None:
    """SIGKILL after the k-th statement of the creation, for every k (every 4th by default)."""
    statements, _ = _statements_and_time(tmp_path)
    assert statements > 10
    for k in range(1, statements + 1, every):
        url = f"sqlite:///{tmp_path / f'killed{k}.db'}"
        child = FORK.Process(target=_create, args=(url, k))
        child.start()
        _reopen_after(url, child)


@pytest.mark.slow
def test_a_store_killed_at_random_moments_of_its_creation_opens_and_works(tmp_path: Path) -> None:
    _, duration = _statements_and_time(tmp_path)
    rng = random.Random(5)
    for i in range(20):
        url = f"sqlite:///{tmp_path / f'killed{i}.db'}"
        child = FORK.Process(target=_create, args=(url, None))
        child.start()
        time.sleep(rng.uniform(0, duration))
        if child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
        _reopen_after(url, child)


def test_tables_left_by_an_older_interrupted_creation_are_finished(tmp_path: Path) -> None:
    """An older tapeagents created each table in a transaction of its own."""
    url = f"sqlite:///{tmp_path / 'half.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE tapes (id VARCHAR(64) PRIMARY KEY)"))
        connection.execute(sa.text("CREATE TABLE blobs (hash VARCHAR(32) PRIMARY KEY)"))
    engine.dispose()
    store = TapeStore(url)
    store.save(Tape(steps=[UserMessage(content="x")]))
    assert store.count() == 1
    store.close()


def test_a_database_with_foreign_rows_and_no_revision_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'foreign.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE tapes (id VARCHAR(64) PRIMARY KEY)"))
        connection.execute(sa.text("INSERT INTO tapes VALUES ('mine')"))
    engine.dispose()
    from tapeagents import StoreError

    with pytest.raises(StoreError, match="holds rows but the database has no schema revision"):
        TapeStore(url)
