"""`TapeFilter`: which stored tapes a listing, a count, a deletion or an export is about.

One filter object is shared by `TapeStore.list`, `TapeStore.count`, `TapeStore.delete_where`,
export selection and the studio, and one function (`conditions`) turns it into SQL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy import text as sql_text

from tapeagents.errors import UsageError
from tapeagents.store.records import TapeSummary
from tapeagents.store.rows import Statements
from tapeagents.store.schema import steps, tape_tags, tapes

__all__ = ["TapeFilter", "conditions", "like_containing"]


@dataclass(frozen=True, kw_only=True)
class TapeFilter:
    """Tapes matching every field that is set (an empty filter matches every tape).

    Example:
        >>> TapeFilter(agent="calc", tag="nightly")
        TapeFilter(agent='calc', tag='nightly')
    """

    agent: str | None = None
    """The agent that ran the tape."""
    status: str | None = None
    """How the last run on the tape ended (`stopped`, `error`, `running`, ...)."""
    tag: str | None = None
    """A tag the tape carries."""
    since: float | None = None
    """Created at or after this time (seconds since the epoch)."""
    until: float | None = None
    """Created before this time (seconds since the epoch)."""
    text: str | None = None
    """Text in any string of any step, matched literally whatever characters it holds
    (case-insensitive for ASCII letters on SQLite, case-sensitive on PostgreSQL)."""
    task_id: str | None = None
    """The task the tape worked on."""
    outcome: str | None = None
    """The tape's recorded outcome (`success`, `failure`, ...)."""

    @property
    def is_empty(self) -> bool:
        """Whether no field is set, so that every tape matches."""
        return not self.text and all(
            getattr(self, field.name) is None for field in fields(self) if field.name != "text"
        )

    def matches(self, summary: TapeSummary) -> bool:
        """Whether a stored tape's header passes the filter (`text` needs the store's query)."""
        if self.text:
            raise UsageError(
                "A text filter searches the steps: use store.list(filter) rather than matches()."
            )
        return (
            (self.agent is None or summary.agent == self.agent)
            and (self.status is None or summary.status == self.status)
            and (self.tag is None or self.tag in summary.tags)
            and (self.since is None or summary.created_at >= self.since)
            and (self.until is None or summary.created_at < self.until)
            and (self.task_id is None or summary.task_id == self.task_id)
            and (self.outcome is None or summary.outcome == self.outcome)
        )

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{field.name}={getattr(self, field.name)!r}"
            for field in fields(self)
            if getattr(self, field.name) is not None
        )
        return f"TapeFilter({shown})"


def conditions(tape_filter: TapeFilter, statements: Statements) -> list[ColumnElement[bool]]:
    """The SQL conditions on `tapes` that select the tapes passing the filter (all must hold).

    `statements` gives the dialect's search of long texts, which live in `blobs`.
    """
    found: list[ColumnElement[bool]] = []
    if tape_filter.task_id is not None:
        found.append(tapes.c.task_id == tape_filter.task_id)
    if tape_filter.outcome is not None:
        found.append(tapes.c.outcome == tape_filter.outcome)
    if tape_filter.agent is not None:
        found.append(tapes.c.agent == tape_filter.agent)
    if tape_filter.status is not None:
        found.append(tapes.c.status == tape_filter.status)
    if tape_filter.tag is not None:
        tagged = select(tape_tags.c.tape_id).where(tape_tags.c.tag == tape_filter.tag)
        found.append(tapes.c.id.in_(tagged))
    if tape_filter.since is not None:
        found.append(tapes.c.created_at >= tape_filter.since)
    if tape_filter.until is not None:
        found.append(tapes.c.created_at < tape_filter.until)
    if tape_filter.text:
        text = tape_filter.text
        # the search text as the store's JSON writes it inside a string (quotes and
        # backslashes escaped), for a cheap first cut over the steps' JSON text
        encoded = json.dumps(text, ensure_ascii=False)[1:-1]
        if statements.escapes_nul:
            text = text.replace("\0", "\ufffd")
        pattern = like_containing(text)
        in_steps = (
            sql_text(statements.steps_with_text)
            .bindparams(encoded=like_containing(encoded), pattern=pattern)
            .columns(steps.c.tape_id)
        )
        in_blobs = (
            sql_text(statements.steps_citing_blobs)
            .bindparams(pattern=pattern, reference='%"$blob"%')
            .columns(steps.c.tape_id)
        )
        found.append(or_(tapes.c.id.in_(in_steps), tapes.c.id.in_(in_blobs)))
    return found


def like_containing(text: str) -> str:
    """A LIKE pattern (escape character `!`) matching any string that contains `text`
    literally: its `%`, `_` and `!` match only themselves."""
    escaped = text.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"
