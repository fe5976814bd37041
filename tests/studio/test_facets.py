"""`TapeStore.facets`: the values the studio's filter menus offer (SQLite and PostgreSQL)."""

from __future__ import annotations

from tapeagents import Tape, TapeMetadata, UserMessage
from tapeagents.store import TapeStore
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
