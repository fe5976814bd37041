"""Durable storage of tapes, steps and LLM calls (SQLite by default, PostgreSQL at scale).

from tapeagents.store import TapeStore
store = TapeStore()  # $TAPEAGENTS_DB, else ./tapes.db
store = TapeStore("postgresql+psycopg://localhost/tapes")
"""

from tapeagents.store.store import DEFAULT_URL, Annotation, TapeStore, TapeSummary, TapeTree

__all__ = ["DEFAULT_URL", "Annotation", "TapeStore", "TapeSummary", "TapeTree"]
