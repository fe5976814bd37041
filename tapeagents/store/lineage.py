"""Forks and their families: forking a stored tape, walking its ancestors and children, and
deleting a tape without losing the steps its forks share with it.

A fork stores only what differs from its parent: its first `prefix_length` steps are read from
the parent (`reads.read_steps`), so forking a long tape writes one row. Deleting a parent first
copies those steps into each fork that reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete as delete_rows
from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from tapeagents.errors import StoreError
from tapeagents.steps import Step
from tapeagents.store import reads, writes
from tapeagents.store.engine import Database
from tapeagents.store.records import TapeSummary, TapeTree
from tapeagents.store.rows import step_row
from tapeagents.store.schema import annotations as annotation_rows
from tapeagents.store.schema import steps, tape_tags, tapes
from tapeagents.tape import Tape

__all__ = ["ancestors", "children", "delete", "fork", "tree"]


def fork(
    database: Database,
    parent: Tape[Any, Any],
    at: int,
    *,
    edits: Mapping[int, Step] | None,
    author: str | None,
) -> Tape[Any, Any]:
    """A stored child of `parent` with its first `at` steps, some replaced by `edits`; the
    unedited prefix is shared with the parent, not copied."""
    if not 0 <= at <= len(parent.steps):
        raise StoreError(
            f"Cannot fork tape {parent.id} at step {at}: it has {len(parent.steps)} steps "
            f"(valid: 0 to {len(parent.steps)})."
        )
    edits = dict(edits or {})
    bad = [i for i in edits if not 0 <= i < at]
    if bad:
        raise StoreError(f"Edits at {bad} fall outside the forked steps 0 to {at - 1}.")
    if reads.status(database, parent.id) is None:
        with database.write() as connection:
            writes.save_tape(database, connection, parent, status=None, agent=None, llm_calls=())
    agent = reads.summary(database, parent.id).agent
    child = parent.fork(at, author=author)
    for index, step in edits.items():
        child.steps[index] = step
    shared = min([at, *edits])  # the unedited prefix is read from the parent, not copied
    with database.write() as connection:
        writes.save_tape(
            database, connection, child, status="forked", agent=agent, llm_calls=(), prefix=shared
        )
    return child


def ancestors(database: Database, tape_id: str) -> list[TapeSummary]:
    """The tape's parent, grandparent, ... (nearest first)."""
    result = []
    current = reads.summary(database, tape_id).parent_id
    while current is not None:
        summary = reads.summary(database, current)
        result.append(summary)
        current = summary.parent_id
    return result


def children(database: Database, tape_id: str) -> list[TapeSummary]:
    """Tapes forked directly from this one, oldest first."""
    with database.read() as connection:
        ids = (
            connection.execute(
                select(tapes.c.id).where(tapes.c.parent_id == tape_id).order_by(tapes.c.created_at)
            )
            .scalars()
            .all()
        )
    return [reads.summary(database, i) for i in ids]


def tree(database: Database, tape_id: str) -> TapeTree:
    """The whole family of the tape, from its oldest ancestor down."""
    found = ancestors(database, tape_id)
    root = found[-1].id if found else tape_id

    def build(node_id: str) -> TapeTree:
        return TapeTree(
            tape=reads.summary(database, node_id),
            children=[build(child.id) for child in children(database, node_id)],
        )

    return build(root)


def delete(database: Database, tape_ids: Iterable[str]) -> int:
    """Delete tapes, each in its own transaction; forks that read steps from a deleted tape
    get their own copy first. Returns how many were deleted."""
    count = 0
    for tape_id in tape_ids:
        with database.write() as connection:
            if connection.execute(select(tapes.c.id).where(tapes.c.id == tape_id)).first() is None:
                raise database.missing(tape_id)
            forks = connection.execute(
                select(tapes.c.id, tapes.c.prefix_length).where(tapes.c.parent_id == tape_id)
            ).all()
            for child_id, prefix in forks:
                if prefix:
                    _materialize(database, connection, child_id, prefix)
            connection.execute(delete_rows(steps).where(steps.c.tape_id == tape_id))
            connection.execute(delete_rows(tape_tags).where(tape_tags.c.tape_id == tape_id))
            notes = annotation_rows.c.tape_id == tape_id
            connection.execute(delete_rows(annotation_rows).where(notes))
            connection.execute(delete_rows(tapes).where(tapes.c.id == tape_id))
            count += 1
    return count


def _materialize(database: Database, connection: Connection, child_id: str, prefix: int) -> None:
    """Copy the steps a child reads from its parent into the child itself."""
    inherited = reads.read_steps(database, connection, child_id, prefix)
    found: dict[str, str] = {}
    rows = [step_row(child_id, i, step, found) for i, step in enumerate(inherited)]
    if found:
        writes.insert_blobs(database, connection, found)
    if rows:
        connection.execute(database.statements.insert_steps, rows)
    connection.execute(update(tapes).where(tapes.c.id == child_id).values(prefix_length=0))
