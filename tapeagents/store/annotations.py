"""People's judgements of stored tapes: ratings, labels and comments on a step or a whole tape.

Export selection reads them to keep or drop model outputs (`tapeagents.export.selection`).
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select

from tapeagents.errors import StoreError, UsageError
from tapeagents.steps import new_id
from tapeagents.store.engine import Database
from tapeagents.store.records import Annotation
from tapeagents.store.schema import annotations as annotation_rows
from tapeagents.store.schema import tapes

__all__ = ["annotate", "annotations_of", "delete_annotation"]


def annotate(
    database: Database,
    tape_id: str,
    step_index: int | None,
    *,
    rating: float | None,
    label: str | None,
    comment: str | None,
    author: str | None,
) -> Annotation:
    """Record a rating, label and/or comment on a step (or on the tape: `step_index=None`)."""
    if rating is None and not label and not comment:
        raise UsageError("An annotation needs a rating, a label or a comment.")
    with database.write() as connection:
        length = connection.execute(select(tapes.c.length).where(tapes.c.id == tape_id)).scalar()
        if length is None:
            raise database.missing(tape_id)
        if step_index is not None and not 0 <= step_index < length:
            raise UsageError(f"Tape {tape_id} has {length} steps; there is no step {step_index}.")
        note = Annotation(
            id=new_id(),
            tape_id=tape_id,
            step_index=step_index,
            rating=rating,
            label=label or None,
            comment=comment or None,
            author=author,
            created_at=time.time(),
        )
        connection.execute(insert(annotation_rows).values(**note.model_dump()))
    return note


def annotations_of(database: Database, tape_id: str) -> list[Annotation]:
    """The annotations of a tape, oldest first."""
    query = (
        select(annotation_rows)
        .where(annotation_rows.c.tape_id == tape_id)
        .order_by(annotation_rows.c.created_at, annotation_rows.c.id)
    )
    with database.read() as connection:
        rows = connection.execute(query).all()
    return [Annotation.model_validate(row._asdict()) for row in rows]


def delete_annotation(database: Database, annotation_id: str) -> None:
    """Remove one annotation."""
    with database.write() as connection:
        done = connection.execute(
            delete(annotation_rows).where(annotation_rows.c.id == annotation_id)
        )
        if done.rowcount == 0:
            raise StoreError(f"No annotation {annotation_id} in the store.")
