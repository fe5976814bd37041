"""Tables of the tape store (SQLAlchemy Core). Changes go through a new Alembic migration.

Long strings (prompts, page contents, model outputs) are stored once in `blobs`, keyed by a
content hash, and referenced from steps and LLM calls as `{"$blob": "<hash>"}`. A message that
appears in a thousand prompts of one tape is therefore stored once, and a step's text and the
model output it came from share one row. Content keys that look like a reference are escaped
on write (`blobs.py`), so stored structure is never confused with what a model wrote.
"""

# No `from __future__ import annotations` here: type checkers would take the `annotations`
# table below for that import.

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

__all__ = [
    "SCHEMA_VERSION",
    "annotations",
    "blobs",
    "leases",
    "llm_calls",
    "metadata",
    "steps",
    "tape_tags",
    "tapes",
]

SCHEMA_VERSION = "0004"
"""Alembic revision of the schema this code writes."""

metadata = MetaData()

tapes = Table(
    "tapes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("parent_id", String(64), index=True),
    Column("fork_index", Integer),
    Column("prefix_length", Integer, nullable=False, default=0),
    Column("author", String(200)),
    Column("agent", String(200), index=True),
    Column("status", String(32), nullable=False, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("updated_at", Float, nullable=False),
    Column("length", Integer, nullable=False, default=0),
    Column("context", Text),
    Column("metadata", Text),
    Column("task_id", String(200), index=True),
    Column("outcome", String(32), index=True),
    Column("reward", Float),
)
"""One row per tape. `prefix_length` steps are read from the parent; the rest are its own."""

tape_tags = Table(
    "tape_tags",
    metadata,
    Column("tape_id", String(64), primary_key=True),
    Column("tag", String(200), primary_key=True, index=True),
)

steps = Table(
    "steps",
    metadata,
    Column("tape_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("kind", String(100), nullable=False),
    Column("agent", String(200)),
    Column("node", String(200)),
    Column("llm_call_id", String(64)),
    Column("created_at", Float, nullable=False),
    Column("data", Text, nullable=False),
    sqlite_with_rowid=False,
)
Index("ix_steps_llm_call_id", steps.c.llm_call_id)

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("parameters", Text),
    Column("prompt", Text, nullable=False),
    Column("output", Text, nullable=False),
    Column("logprobs", Text),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("cost", Float),
    Column("latency", Float),
    Column("created_at", Float, nullable=False),
    Column("retries", Integer, nullable=False, server_default="0"),
    sqlite_with_rowid=False,
)
"""One row per LLM call; `retries` counts the transient failures retried before the answer."""

blobs = Table(
    "blobs",
    metadata,
    Column("hash", String(32), primary_key=True),
    Column("text", Text, nullable=False),
)

annotations = Table(
    "annotations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tape_id", String(64), nullable=False, index=True),
    Column("step_index", Integer),
    Column("rating", Float),
    Column("label", String(200), index=True),
    Column("comment", Text),
    Column("author", String(200)),
    Column("created_at", Float, nullable=False),
)
"""A person's judgement of a step (or of the whole tape when `step_index` is NULL)."""

leases = Table(
    "leases",
    metadata,
    Column("tape_id", String(64), primary_key=True),
    Column("run_id", String(32), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
"""The run that holds each running tape (`leases.py`): who it is and when its lease lapses
unless renewed, in the database's clock. No row, or an expired one: no live run holds the tape."""
