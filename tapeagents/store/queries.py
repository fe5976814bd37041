"""Finding stored tapes: listings and counts by `TapeFilter`, and the values filters can take."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select

from tapeagents.errors import CorruptTapeError
from tapeagents.store.engine import Database
from tapeagents.store.filters import TapeFilter, conditions
from tapeagents.store.records import TapeSummary
from tapeagents.store.rows import summary_from_row
from tapeagents.store.schema import tape_tags, tapes

__all__ = ["count_tapes", "facets", "list_tapes", "matching_ids"]


def list_tapes(
    database: Database,
    tape_filter: TapeFilter,
    *,
    limit: int | None,
    offset: int,
    on_unreadable: Callable[[CorruptTapeError], None] | None = None,
) -> list[TapeSummary]:
    """The headers of the tapes passing the filter, newest first, one page of them.

    A header that cannot be read (a damaged row) raises `CorruptTapeError`; with
    `on_unreadable`, it is handed to that instead and left out (exports go on without it).
    """
    query = (
        select(tapes)
        .where(*conditions(tape_filter, database.statements))
        .order_by(tapes.c.created_at.desc(), tapes.c.id)
        .limit(limit)
        .offset(offset)
    )
    with database.read() as connection:
        rows = connection.execute(query).all()
        tags: dict[str, list[str]] = {row.id: [] for row in rows}
        if rows:
            for tape_id, tag_value in connection.execute(
                select(tape_tags.c.tape_id, tape_tags.c.tag).where(
                    tape_tags.c.tape_id.in_(list(tags))
                )
            ):
                tags[tape_id].append(tag_value)
    summaries = []
    for row in rows:
        try:
            summaries.append(summary_from_row(row, tags[row.id]))
        except CorruptTapeError as error:
            if on_unreadable is None:
                raise
            on_unreadable(error)
    return summaries


def count_tapes(database: Database, tape_filter: TapeFilter) -> int:
    """How many tapes pass the filter."""
    query = (
        select(func.count()).select_from(tapes).where(*conditions(tape_filter, database.statements))
    )
    with database.read() as connection:
        return int(connection.execute(query).scalar() or 0)


def matching_ids(database: Database, tape_filter: TapeFilter) -> list[str]:
    """The ids of the tapes passing the filter, in no particular order."""
    query = select(tapes.c.id).where(*conditions(tape_filter, database.statements))
    with database.read() as connection:
        return list(connection.execute(query).scalars().all())


def facets(database: Database, *, limit: int) -> dict[str, list[tuple[str, int]]]:
    """The values tapes have for `agent`, `status`, `outcome` and `tag`, each with how many
    tapes have it, most common first (at most `limit` per field)."""
    columns = {"agent": tapes.c.agent, "status": tapes.c.status, "outcome": tapes.c.outcome}
    queries = {
        name: select(column, func.count()).where(column.is_not(None)).group_by(column)
        for name, column in columns.items()
    }
    queries["tag"] = select(tape_tags.c.tag, func.count()).group_by(tape_tags.c.tag)
    result = {}
    with database.read() as connection:
        for name, query in queries.items():
            rows = list(connection.execute(query).all())
            rows.sort(key=lambda row: (-row[1], row[0]))
            result[name] = [(str(value), int(number)) for value, number in rows[:limit]]
    return result
