"""Writing tapes, steps, LLM calls and run statuses: the store's hot path.

Each function runs on a connection that is already in a transaction: `TapeStore` gives it its
own transaction, or, from an event loop, a share of a group commit (`group.py`). A tape's long
texts go to `blobs` on the way (`blobs.py`), and a new fork stores only the steps it does not
share with its stored parent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from tapeagents.errors import StoreConflict, StoreError
from tapeagents.llms.base import LLMCall
from tapeagents.steps import Step
from tapeagents.store.engine import Database
from tapeagents.store.reads import read_steps
from tapeagents.store.rows import call_row, dumps, jsonable, outcome_columns, step_row
from tapeagents.store.schema import tape_tags, tapes
from tapeagents.tape import Tape, TapeMetadata

__all__ = [
    "append_steps",
    "insert_blobs",
    "insert_calls",
    "save_tape",
    "set_status",
    "set_tags",
    "shared_prefix",
]


def save_tape(
    database: Database,
    connection: Connection,
    tape: Tape[Any, Any],
    *,
    status: str | None,
    agent: str | None,
    llm_calls: Sequence[LLMCall],
    prefix: int | None = None,
) -> str | None:
    """Store the tape's header if new and the steps not stored yet; return the stored status
    before (None: the tape is new). `prefix`: steps a new tape reads from its parent (found by
    comparing with the parent when None)."""
    statements = database.statements
    row = connection.execute(statements.select_length_status, {"tape": tape.id}).first()
    if row is None:
        if prefix is None:
            prefix = shared_prefix(database, connection, tape)
        now = time.time()
        connection.execute(
            statements.insert_tape,
            {
                "id": tape.id,
                "parent_id": tape.parent_id,
                "fork_index": tape.fork_index,
                "prefix_length": prefix,
                "author": tape.author,
                "agent": agent or tape.author,
                "status": status or "new",
                "created_at": now,
                "updated_at": now,
                "length": prefix,
                "context": dumps(jsonable(tape.context)),
                **outcome_columns(tape.metadata),
            },
        )
        set_tags(database, connection, tape.id, tape.metadata.tags, new=True)
        stored = prefix
    else:
        stored = row.length
        if stored > len(tape.steps):
            raise StoreError(
                f"Tape {tape.id} has {stored} steps in the store but {len(tape.steps)} "
                "here. Fork it (store.fork) to keep a shorter or edited version."
            )
        if stored:
            _check_same_step(database, connection, tape, stored - 1)
        values: dict[str, Any] = outcome_columns(tape.metadata)
        if status:
            values["status"] = status
        if agent:
            values["agent"] = agent
        connection.execute(update(tapes).where(tapes.c.id == tape.id).values(**values))
        set_tags(database, connection, tape.id, tape.metadata.tags)
    append_steps(database, connection, tape.id, stored, tape.steps[stored:], llm_calls)
    return None if row is None else str(row.status)


def append_steps(
    database: Database,
    connection: Connection,
    tape_id: str,
    start: int,
    new_steps: Sequence[Step],
    calls: Sequence[LLMCall],
) -> None:
    """Append steps at index `start`, which must be the stored length (else `StoreConflict`:
    another process appended). The steps and their LLM calls are one write: a failure at any
    point, the COMMIT included, leaves none of them."""
    statements = database.statements
    found: dict[str, str] = {}
    rows = [step_row(tape_id, start + i, step, found) for i, step in enumerate(new_steps)]
    call_rows = [call_row(call, found) for call in calls]
    if found:
        insert_blobs(database, connection, found)
    if call_rows:
        connection.execute(statements.insert_calls, call_rows)
    moved = connection.execute(
        statements.move_length,
        {"tape": tape_id, "start": start, "end": start + len(rows), "now": time.time()},
    )
    if moved.rowcount != 1:
        exists = connection.execute(select(tapes.c.length).where(tapes.c.id == tape_id)).scalar()
        if exists is None:
            raise database.missing(tape_id)
        if exists == start:  # not moved: never blame another process for what it did not do
            raise StoreError(
                f"Cannot append to tape {tape_id} at step {start} (its stored length), the "
                "database did not update it. Check the database's health, then retry."
            )
        raise StoreConflict(
            f"Tape {tape_id} has {exists} stored steps, not {start}: another process "
            "appended to it. Reload it with store.get() before continuing."
        )
    if rows:
        connection.execute(statements.insert_steps, rows)


def insert_calls(database: Database, connection: Connection, calls: Sequence[LLMCall]) -> None:
    """Store LLM calls; calls already stored are kept as they are."""
    found: dict[str, str] = {}
    rows = [call_row(call, found) for call in calls]
    if found:
        insert_blobs(database, connection, found)
    if rows:
        connection.execute(database.statements.insert_calls, rows)


def insert_blobs(database: Database, connection: Connection, found: Mapping[str, str]) -> None:
    """Store long texts by hash; texts already stored are kept."""
    rows = [{"hash": key, "text": text} for key, text in found.items()]
    connection.execute(database.statements.insert_blobs, rows)


def set_status(
    database: Database,
    connection: Connection,
    tape_id: str,
    status: str,
    metadata: TapeMetadata | None,
) -> None:
    """Record how a run on the tape ended, and with `metadata` its result, outcome and tags."""
    statements = database.statements
    values: dict[str, Any] = {"tape": tape_id, "status": status, "now": time.time()}
    if metadata is None:
        done = connection.execute(statements.set_status, values)
    else:
        values.update(outcome_columns(metadata))
        done = connection.execute(statements.set_status_and_outcome, values)
    if done.rowcount == 0:
        raise database.missing(tape_id)
    if metadata is not None:
        set_tags(database, connection, tape_id, metadata.tags)


def set_tags(
    database: Database,
    connection: Connection,
    tape_id: str,
    tags: Iterable[str],
    *,
    new: bool = False,
) -> None:
    """Make the tape's stored tags `tags` (`new`: the tape has none yet)."""
    wanted = list(dict.fromkeys(tags))
    if not new:
        stored = connection.execute(database.statements.select_tags, {"tape": tape_id})
        if sorted(stored.scalars()) == sorted(wanted):
            return  # the usual case when a run ends: nothing to rewrite
        connection.execute(delete(tape_tags).where(tape_tags.c.tape_id == tape_id))
    if wanted:
        connection.execute(
            database.statements.insert_tags, [{"tape_id": tape_id, "tag": t} for t in wanted]
        )


def shared_prefix(database: Database, connection: Connection, tape: Tape[Any, Any]) -> int:
    """How many of a new tape's first steps can be read from its stored parent."""
    if not tape.parent_id or not tape.fork_index:
        return 0
    parent_length = connection.execute(
        select(tapes.c.length).where(tapes.c.id == tape.parent_id)
    ).scalar()
    if parent_length is None:
        return 0
    limit = min(tape.fork_index, parent_length, len(tape.steps))
    stored = read_steps(database, connection, tape.parent_id, limit)
    prefix = 0
    for mine, theirs in zip(tape.steps, stored, strict=False):
        if mine.metadata.id != theirs.metadata.id or mine != theirs:
            break
        prefix += 1
    return prefix


def _check_same_step(
    database: Database, connection: Connection, tape: Tape[Any, Any], index: int
) -> None:
    """Raise if the tape's step `index` is not the stored one: the tape was edited."""
    stored = read_steps(database, connection, tape.id, index + 1, start=index)
    if stored and stored[0].metadata.id != tape.steps[index].metadata.id:
        raise StoreError(
            f"Step {index} of tape {tape.id} differs from the stored one: the tape was "
            "edited. Fork it (store.fork) to keep the edited version."
        )
