"""Reading tapes, their headers and LLM calls back from the store.

A fork keeps only the steps that differ from its parent, so reading a tape's steps follows its
lineage: `read_steps` gathers each ancestor's share in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, cast

from sqlalchemy import Row, func, select
from sqlalchemy.engine import Connection

from tapeagents.errors import CorruptTapeError, StoreError, UsageError
from tapeagents.llms.base import LLMCall, LLMOutput
from tapeagents.steps import Step
from tapeagents.store.blobs import blob_refs, find_blob_refs
from tapeagents.store.engine import Database
from tapeagents.store.records import TapeSummary
from tapeagents.store.rows import (
    CorruptCallError,
    StepRow,
    call_from_row,
    parse_call_json,
    parse_steps,
    summary_from_row,
    tape_from_row,
)
from tapeagents.store.schema import blobs, llm_calls, steps, tape_tags, tapes
from tapeagents.tape import Tape

__all__ = [
    "CHUNK",
    "StoreCache",
    "all_ids",
    "blob_texts",
    "get",
    "get_llm_calls",
    "iter_tapes",
    "llm_calls_of",
    "read_blobs",
    "read_steps",
    "resolve_id",
    "stats",
    "status",
    "summary",
]

CHUNK = 500
"""Keys per `IN (...)` query, well under every database's limit on bound parameters."""


def get(database: Database, tape_id: str) -> Tape[Any, Any]:
    """The stored tape with all its steps (a fork's shared prefix included)."""
    with database.read() as connection:
        row = connection.execute(select(tapes).where(tapes.c.id == tape_id)).first()
        if row is None:
            raise database.missing(tape_id)
        tape_steps = read_steps(database, connection, tape_id, row.length)
    return tape_from_row(row, tape_steps)


def iter_tapes(
    database: Database,
    tape_ids: Iterable[str] | None,
    *,
    batch_size: int,
    on_unreadable: Callable[[CorruptTapeError], None] | None = None,
) -> Iterator[Tape[Any, Any]]:
    """Tapes in order (all of them when `tape_ids` is None), `batch_size` tapes per read.

    A tape that cannot be read raises `CorruptTapeError` when it is reached (the tapes before
    it are handed out first); with `on_unreadable`, it is handed to that instead and skipped,
    so an export of many tapes goes on.
    """
    ids = list(tape_ids) if tape_ids is not None else all_ids(database)
    for start in range(0, len(ids), batch_size):
        yield from _get_many(database, ids[start : start + batch_size], on_unreadable)


def _get_many(
    database: Database,
    tape_ids: Sequence[str],
    on_unreadable: Callable[[CorruptTapeError], None] | None,
) -> Iterator[Tape[Any, Any]]:
    """Several stored tapes, in the order asked; a fork's shared prefix is read as in `get`.

    The rows are read in one transaction, but each tape's steps are built only when the tape
    is handed out: a batch never lives in memory as objects all at once, which spares the
    garbage collector most of its work.
    """
    wanted = list(dict.fromkeys(tape_ids))
    unreadable: dict[str, CorruptTapeError] = {}
    with database.read() as connection:
        rows = {
            row.id: row for row in connection.execute(select(tapes).where(tapes.c.id.in_(wanted)))
        }
        for tape_id in wanted:
            if tape_id not in rows:
                raise database.missing(tape_id)
        own = [i for i in wanted if rows[i].prefix_length == 0 and rows[i].length > 0]
        step_rows: dict[str, list[StepRow]] = {i: [] for i in own}
        texts: dict[str, str] = {}
        if own:
            query = (
                select(steps.c.tape_id, steps.c.idx, steps.c.kind, steps.c.data)
                .where(steps.c.tape_id.in_(own))
                .order_by(steps.c.tape_id, steps.c.idx)
            )
            # the rows are kept as read (they behave as tuples): copying them costs time
            found = cast(list[StepRow], connection.execute(query).all())
            texts = blob_texts(connection, found)
            for row in found:
                step_rows[row[0]].append(row)
            for tape_id in own:
                if len(step_rows[tape_id]) != rows[tape_id].length:
                    unreadable[tape_id] = _wrong_length(
                        tape_id, rows[tape_id].length, len(step_rows[tape_id])
                    )
        forks: dict[str, list[Step]] = {}
        for tape_id in wanted:
            if rows[tape_id].prefix_length > 0:  # a fork: read through its lineage
                try:
                    forks[tape_id] = read_steps(database, connection, tape_id, rows[tape_id].length)
                except CorruptTapeError as error:
                    unreadable[tape_id] = error
    for tape_id in tape_ids:
        try:
            if tape_id in unreadable:
                raise unreadable[tape_id]
            if tape_id in forks:
                tape_steps = list(forks[tape_id])
            else:
                tape_steps = parse_steps(step_rows.get(tape_id, ()), texts)
            tape = tape_from_row(rows[tape_id], tape_steps)
        except CorruptTapeError as error:
            if on_unreadable is None:
                raise
            on_unreadable(error)
            continue
        yield tape


def _wrong_length(tape_id: str, length: int, found: int, start: int = 0) -> CorruptTapeError:
    where = f" from step {start}" if start else ""
    return CorruptTapeError(
        tape_id, f"it should have {length} steps{where} but the store has {found} of them"
    )


def all_ids(database: Database) -> list[str]:
    """The ids of every stored tape, oldest first."""
    with database.read() as connection:
        return list(connection.execute(select(tapes.c.id).order_by(tapes.c.created_at)).scalars())


def status(database: Database, tape_id: str) -> str | None:
    """The stored status of a tape, or None if it is not stored."""
    with database.read() as connection:
        found: str | None = connection.execute(
            select(tapes.c.status).where(tapes.c.id == tape_id)
        ).scalar()
        return found


def resolve_id(database: Database, prefix: str) -> str:
    """The full id of the one tape whose id starts with `prefix`."""
    with database.read() as connection:
        found = (
            connection.execute(
                select(tapes.c.id).where(tapes.c.id.startswith(prefix, autoescape=True)).limit(2)
            )
            .scalars()
            .all()
        )
    if not found:
        raise database.missing(prefix)
    if len(found) > 1:
        raise StoreError(f"Several tapes start with {prefix!r}; give more of the id.")
    return str(found[0])


def summary(database: Database, tape_id: str) -> TapeSummary:
    """One tape's header."""
    with database.read() as connection:
        row = connection.execute(select(tapes).where(tapes.c.id == tape_id)).first()
        if row is None:
            raise database.missing(tape_id)
        tags = (
            connection.execute(select(tape_tags.c.tag).where(tape_tags.c.tape_id == tape_id))
            .scalars()
            .all()
        )
    return summary_from_row(row, list(tags))


def read_steps(
    database: Database, connection: Connection, tape_id: str, end: int, start: int = 0
) -> list[Step]:
    """Steps [start, end) of a tape, following fork prefixes up the lineage."""
    segments: list[tuple[str, int, int]] = []  # (tape id, from, to)
    current, upto = tape_id, end
    while upto > start:
        row = connection.execute(
            select(tapes.c.parent_id, tapes.c.prefix_length).where(tapes.c.id == current)
        ).first()
        if row is None:
            raise database.missing(current)
        own_from = max(row.prefix_length, start)
        if own_from < upto:
            segments.append((current, own_from, upto))
        if row.prefix_length <= start or row.parent_id is None:
            break
        current, upto = row.parent_id, min(upto, row.prefix_length)
    segments.reverse()
    rows: list[StepRow] = []
    for seg_id, seg_from, seg_to in segments:
        result = connection.execute(
            select(steps.c.idx, steps.c.kind, steps.c.data)
            .where(steps.c.tape_id == seg_id, steps.c.idx >= seg_from, steps.c.idx < seg_to)
            .order_by(steps.c.idx)
        )
        rows.extend((seg_id, idx, kind, data) for idx, kind, data in result.all())
    if len(rows) != end - start:
        raise _wrong_length(tape_id, end - start, len(rows), start)
    return parse_steps(rows, blob_texts(connection, rows), tape_id)


def blob_texts(connection: Connection, rows: Sequence[StepRow]) -> dict[str, str]:
    """The texts of the blobs that the step rows refer to."""
    refs = {ref for *_, data in rows for ref in find_blob_refs(data)}
    return read_blobs(connection, refs) if refs else {}


def read_blobs(connection: Connection, refs: set[str]) -> dict[str, str]:
    """The texts of these blobs, by hash."""
    texts: dict[str, str] = {}
    keys = list(refs)
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        query = select(blobs.c.hash, blobs.c.text).where(blobs.c.hash.in_(chunk))
        texts.update((key, text) for key, text in connection.execute(query))
    return texts


def get_llm_calls(database: Database, ids: Iterable[str]) -> list[LLMCall]:
    """The stored LLM calls with these ids, in the given order (missing ones skipped).

    Raises:
        CorruptCallError: A call's row cannot be read; the error names the call.
    """
    wanted = list(dict.fromkeys(ids))
    rows: dict[str, Row[Any]] = {}
    with database.read() as connection:
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            for row in connection.execute(select(llm_calls).where(llm_calls.c.id.in_(chunk))):
                rows[row.id] = row
        refs: set[str] = set()
        parsed = {key: parse_call_json(row) for key, row in rows.items()}
        for prompt, output in parsed.values():
            blob_refs(prompt, refs)
            blob_refs(output, refs)
        texts = read_blobs(connection, refs)
    return [call_from_row(rows[key], *parsed[key], texts) for key in wanted if key in rows]


def llm_calls_of(database: Database, tape: Tape[Any, Any]) -> list[LLMCall]:
    """The LLM calls that produced the tape's steps, in tape order.

    Raises:
        CorruptTapeError: A call cannot be read; the error names the tape and the step.
    """
    ids = [s.metadata.llm_call_id for s in tape.steps if s.metadata.llm_call_id]
    try:
        return get_llm_calls(database, ids)
    except CorruptCallError as error:
        index = next(i for i, s in enumerate(tape.steps) if s.metadata.llm_call_id == error.call_id)
        reason = f"step {index} was made by the LLM call {error.call_id}, which {error.reason}"
        raise CorruptTapeError(tape.id, reason, index) from None


def stats(database: Database) -> dict[str, int]:
    """How many rows each table holds: tapes, steps, llm_calls, blobs."""
    counts = {}
    with database.read() as connection:
        for table in (tapes, steps, llm_calls, blobs):
            query = select(func.count()).select_from(table)
            counts[table.name] = int(connection.execute(query).scalar() or 0)
    return counts


class StoreCache(MutableMapping[str, LLMOutput]):
    """A read-only mapping from request id to output over the stored calls, for `CachedLLM`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __getitem__(self, key: str) -> LLMOutput:
        found = get_llm_calls(self.database, [key])
        if not found:
            raise KeyError(key)
        return found[0].output

    def __setitem__(self, key: str, value: LLMOutput) -> None:
        raise UsageError("The store's LLM cache is filled by runs with store=...; it is read-only.")

    def __delitem__(self, key: str) -> None:
        raise UsageError("The store's LLM cache is read-only.")

    def __iter__(self) -> Iterator[str]:
        with self.database.engine.connect() as connection:
            yield from connection.execute(select(llm_calls.c.id)).scalars()

    def __len__(self) -> int:
        with self.database.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(llm_calls)).scalar() or 0
            )
