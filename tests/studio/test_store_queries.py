"""Store queries the studio relies on: facets for its filter menus, and text search (SQLite and
PostgreSQL)."""

from __future__ import annotations

from tapeagents import Tape, TapeMetadata, ToolCall, UserMessage
from tapeagents.store import TapeFilter, TapeStore
from tests.store.conftest import store, store_url  # noqa: F401 - both databases


def test_facets_count_tapes_per_value(store: TapeStore) -> None:  # noqa: F811
    assert store.facets() == {"agent": [], "status": [], "outcome": [], "tag": []}
    for agent, status, outcome, tags in [
        ("calc", "stopped", "success", ["eval", "v2"]),
        ("calc", "error", "failure", ["eval"]),
        ("chat", "stopped", None, []),
    ]:
        tape = Tape(
            steps=[UserMessage(content="hi")],
            metadata=TapeMetadata(outcome=outcome, tags=tags),
        )
        store.save(tape, status=status, agent=agent)
    facets = store.facets()
    assert facets["agent"] == [("calc", 2), ("chat", 1)]
    assert facets["status"] == [("stopped", 2), ("error", 1)]
    assert facets["outcome"] == [("failure", 1), ("success", 1)]
    assert facets["tag"] == [("eval", 2), ("v2", 1)]
    assert store.facets(limit=1)["agent"] == [("calc", 2)]


def test_text_search_finds_every_tape_with_a_matching_long_text(store: TapeStore) -> None:  # noqa: F811
    """Long texts are stored once as blobs; a search must find all the tapes citing them
    (the studio's search box), however many match, nested ones included."""
    filler = "All work and no play makes a long observation. " * 8  # over BLOB_MIN_LENGTH
    for i in range(120):
        store.save(Tape(steps=[UserMessage(content=f"{filler} needle number {i}.")]))
    nested = Tape(steps=[ToolCall(name="f", arguments={"page": {"text": filler + " haystack"}})])
    store.save(nested)
    store.save(Tape(steps=[UserMessage(content="a short needle")]))
    assert store.count(TapeFilter(text="needle")) == 121
    assert len(store.list(TapeFilter(text="needle"), limit=None)) == 121
    assert [s.id for s in store.list(TapeFilter(text="haystack"))] == [nested.id]
    assert store.count(TapeFilter(text="needle number 7.")) == 1
    assert store.count(TapeFilter(text="no such text")) == 0
