"""Durable storage of tapes, steps and LLM calls (SQLite by default, PostgreSQL at scale).

from tapeagents.store import TapeFilter, TapeStore
store = TapeStore()  # $TAPEAGENTS_DB, else ./tapes.db
store = TapeStore("postgresql+psycopg://localhost/tapes")
store.list(TapeFilter(agent="calc"), limit=20)
"""

from tapeagents.store.store import (
    DEFAULT_URL,
    Annotation,
    TapeFilter,
    TapeStore,
    TapeSummary,
    TapeTree,
)

__all__ = ["DEFAULT_URL", "Annotation", "TapeFilter", "TapeStore", "TapeSummary", "TapeTree"]
