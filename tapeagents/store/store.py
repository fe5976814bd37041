"""`TapeStore`: tapes, their steps and LLM calls in SQLite or PostgreSQL, written as they happen.

Every `append_steps` is one transaction, so a process killed at any point leaves each stored
tape a valid prefix of what it was. Forks store only what differs from their parent: a child
reads its parent's first `prefix_length` steps, so forking a long tape writes one row.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tapeagents.errors import StoreError, UsageError
from tapeagents.llms.base import LLMCall, LLMOutput, Prompt, TokenLogprob, Usage
from tapeagents.steps import Step, new_id
from tapeagents.store import schema
from tapeagents.store.blobs import blob_refs, externalize, find_blob_refs, internalize
from tapeagents.store.engine import Transaction, create_store_engine, reason
from tapeagents.store.group import GroupCommit
from tapeagents.store.rows import (
    Statements,
    dumps,
    jsonable,
    outcome_columns,
    parse_steps,
    step_row,
)
from tapeagents.store.schema import annotations, blobs, llm_calls, steps, tape_tags, tapes
from tapeagents.tape import Tape, TapeMetadata

__all__ = ["DEFAULT_URL", "Annotation", "TapeStore", "TapeSummary", "TapeTree"]

DEFAULT_URL = "sqlite:///tapes.db"
_CHUNK = 500


class TapeSummary(BaseModel):
    """A tape's header, without its steps: what listings show."""

    id: str
    parent_id: str | None
    fork_index: int | None
    author: str | None
    agent: str | None
    status: str
    created_at: float
    updated_at: float
    length: int
    task_id: str | None = None
    outcome: str | None = None
    reward: float | None = None
    tags: list[str] = Field(default_factory=list)


class Annotation(BaseModel):
    """A person's rating, label and/or comment on one step, or on the whole tape."""

    id: str
    tape_id: str
    step_index: int | None = None
    """Index of the annotated step; None for the tape as a whole."""
    rating: float | None = None
    label: str | None = None
    comment: str | None = None
    author: str | None = None
    created_at: float


class TapeTree(BaseModel):
    """A tape and, recursively, the tapes forked from it."""

    tape: TapeSummary
    children: list[TapeTree] = Field(default_factory=list)


class TapeStore:
    """Durable storage of tapes, steps and LLM calls.

    Args:
        url: A SQLAlchemy URL (`sqlite:///tapes.db`, `postgresql+psycopg://user@host/db`) or a
            file path for SQLite. Default: `$TAPEAGENTS_DB`, else `./tapes.db`.
        upgrade: Bring the schema to this version of tapeagents on open (Alembic migrations).

    One store can be shared by threads; several processes may append to one database.

    Example:
        >>> store = TapeStore("sqlite:///:memory:")
        >>> tape = Tape(steps=[UserMessage(content="hi")])
        >>> store.save(tape)
        >>> store.get(tape.id).steps == tape.steps
        True
    """

    def __init__(self, url: str | None = None, *, upgrade: bool = True) -> None:
        url = url or os.environ.get("TAPEAGENTS_DB") or DEFAULT_URL
        if "://" not in url:
            url = f"sqlite:///{url}"
        self.url = url
        self.engine = create_store_engine(url)
        self.display_url = self.engine.url.render_as_string(hide_password=True)
        self._statements = Statements(self.engine.dialect.name)
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit] = (
            weakref.WeakKeyDictionary()
        )
        self.writes_inline = self.engine.dialect.name == "sqlite"
        """SQLite writes take well under a millisecond: callers in an event loop may make them
        directly rather than through a worker thread."""
        try:
            with self.engine.connect():
                pass
        except SQLAlchemyError as error:
            raise StoreError(
                f"Cannot open the tape store at {self.display_url}: {reason(error)}. "
                "Check that the database server is running and the URL is right."
            ) from None
        if upgrade:
            self.upgrade()

    # ------------------------------------------------------------------ schema

    def _alembic_config(self, connection: Connection) -> Any:
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        config.attributes["connection"] = connection
        return config

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self._read() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self) -> None:
        """Apply the migrations the database lacks (a no-op when it is current)."""
        current = self.schema_revision()
        if current == schema.SCHEMA_VERSION:
            return
        from alembic import command

        try:
            with self.engine.begin() as connection:
                command.upgrade(self._alembic_config(connection), "head")
        except SQLAlchemyError as error:
            raise StoreError(
                f"Could not migrate the tape store at {self.display_url} from revision "
                f"{current} to {schema.SCHEMA_VERSION}: {reason(error)}"
            ) from None

    # ------------------------------------------------------------------ writing

    def save(
        self,
        tape: Tape[Any, Any],
        *,
        status: str | None = None,
        agent: str | None = None,
        llm_calls: Sequence[LLMCall] = (),
    ) -> str | None:
        """Store the tape: its header if new, and the steps the store does not have yet.

        Returns the tape's stored status before this save (None: the tape is new), so a run
        knows in the same transaction whether it resumes an interrupted one.

        A tape that is already stored must extend what is stored; an edited copy should be
        forked instead (`fork`), and the error says so.
        """
        with self._write() as connection:
            return self._save(connection, tape, status, agent, llm_calls)

    async def asave(
        self,
        tape: Tape[Any, Any],
        *,
        status: str | None = None,
        agent: str | None = None,
        llm_calls: Sequence[LLMCall] = (),
    ) -> str | None:
        """`save` from an event loop, committed together with the loop's other writes."""
        return await self._group().write(
            lambda connection: self._save(connection, tape, status, agent, llm_calls)
        )

    def _save(
        self,
        connection: Connection,
        tape: Tape[Any, Any],
        status: str | None,
        agent: str | None,
        llm_calls: Sequence[LLMCall],
        prefix: int | None = None,
    ) -> str | None:
        row = connection.execute(self._statements.select_length_status, {"tape": tape.id}).first()
        if row is None:
            if prefix is None:
                prefix = self._shared_prefix(connection, tape)
            now = time.time()
            connection.execute(
                self._statements.insert_tape,
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
            self._set_tags(connection, tape.id, tape.metadata.tags, new=True)
            stored = prefix
        else:
            stored = row.length
            if stored > len(tape.steps):
                raise StoreError(
                    f"Tape {tape.id} has {stored} steps in the store but {len(tape.steps)} "
                    "here. Fork it (store.fork) to keep a shorter or edited version."
                )
            if stored:
                self._check_same_step(connection, tape, stored - 1)
            values: dict[str, Any] = outcome_columns(tape.metadata)
            if status:
                values["status"] = status
            if agent:
                values["agent"] = agent
            connection.execute(update(tapes).where(tapes.c.id == tape.id).values(**values))
            self._set_tags(connection, tape.id, tape.metadata.tags)
        self._append(connection, tape.id, stored, tape.steps[stored:], llm_calls)
        return None if row is None else str(row.status)

    def append_steps(
        self,
        tape_id: str,
        start: int,
        new_steps: Sequence[Step],
        llm_calls: Sequence[LLMCall] = (),
    ) -> None:
        """Append steps at index `start` (the stored length) in one transaction.

        Raises `StoreError` if the stored tape does not have exactly `start` steps, which means
        another process appended to it meanwhile.
        """
        with self._write() as connection:
            self._append(connection, tape_id, start, new_steps, llm_calls)

    async def aappend_steps(
        self,
        tape_id: str,
        start: int,
        new_steps: Sequence[Step],
        llm_calls: Sequence[LLMCall] = (),
    ) -> None:
        """`append_steps` from an event loop, committed together with the loop's other
        writes; it returns once the steps are committed."""
        await self._group().write(
            lambda connection: self._append(connection, tape_id, start, new_steps, llm_calls)
        )

    def save_llm_calls(self, calls: Sequence[LLMCall]) -> None:
        """Store LLM calls (calls already stored are kept as they are)."""
        with self._write() as connection:
            self._insert_calls(connection, calls)

    async def asave_llm_calls(self, calls: Sequence[LLMCall]) -> None:
        """`save_llm_calls` from an event loop, committed with the loop's other writes."""
        await self._group().write(lambda connection: self._insert_calls(connection, calls))

    def set_status(
        self, tape_id: str, status: str, *, metadata: TapeMetadata | None = None
    ) -> None:
        """Record how a run on the tape ended (and the tape's result, error and tags)."""
        with self._write() as connection:
            self._set_status(connection, tape_id, status, metadata)

    async def aset_status(
        self, tape_id: str, status: str, *, metadata: TapeMetadata | None = None
    ) -> None:
        """`set_status` from an event loop, committed with the loop's other writes."""
        await self._group().write(
            lambda connection: self._set_status(connection, tape_id, status, metadata)
        )

    def _set_status(
        self, connection: Connection, tape_id: str, status: str, metadata: TapeMetadata | None
    ) -> None:
        values: dict[str, Any] = {"tape": tape_id, "status": status, "now": time.time()}
        if metadata is None:
            done = connection.execute(self._statements.set_status, values)
        else:
            values.update(outcome_columns(metadata))
            done = connection.execute(self._statements.set_status_and_outcome, values)
        if done.rowcount == 0:
            raise self._missing(tape_id)
        if metadata is not None:
            self._set_tags(connection, tape_id, metadata.tags)

    def _group(self) -> GroupCommit:
        """The group commit of the running event loop (one per loop, made on first use)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = GroupCommit(self, loop)
        return group

    def _append(
        self,
        connection: Connection,
        tape_id: str,
        start: int,
        new_steps: Sequence[Step],
        calls: Sequence[LLMCall],
    ) -> None:
        found: dict[str, str] = {}
        rows = [step_row(tape_id, start + i, step, found) for i, step in enumerate(new_steps)]
        call_rows = [self._call_row(call, found) for call in calls]
        if found:
            self._insert_blobs(connection, found)
        if call_rows:
            connection.execute(self._statements.insert_calls, call_rows)
        moved = connection.execute(
            self._statements.move_length,
            {"tape": tape_id, "start": start, "end": start + len(rows), "now": time.time()},
        )
        if moved.rowcount != 1:
            exists = connection.execute(
                select(tapes.c.length).where(tapes.c.id == tape_id)
            ).scalar()
            if exists is None:
                raise self._missing(tape_id)
            raise StoreError(
                f"Tape {tape_id} has {exists} stored steps, not {start}: another process "
                "appended to it. Reload it with store.get() before continuing."
            )
        if rows:
            connection.execute(self._statements.insert_steps, rows)

    def _insert_calls(self, connection: Connection, calls: Sequence[LLMCall]) -> None:
        found: dict[str, str] = {}
        rows = [self._call_row(call, found) for call in calls]
        if found:
            self._insert_blobs(connection, found)
        if rows:
            connection.execute(self._statements.insert_calls, rows)

    @staticmethod
    def _call_row(call: LLMCall, found: dict[str, str]) -> dict[str, Any]:
        # usage and logprobs have columns of their own; defaults are restored on loading
        output = call.output.model_dump(
            mode="json", exclude={"logprobs", "usage"}, exclude_defaults=True
        )
        prompt = call.prompt.model_dump(mode="json", exclude_defaults=True)
        logprobs = call.output.logprobs
        return {
            "id": call.id,
            "model": call.model,
            "parameters": dumps(call.parameters) if call.parameters else None,
            "prompt": dumps(externalize(prompt, found)),
            "output": dumps(externalize(output, found)),
            "logprobs": dumps([lp.model_dump() for lp in logprobs]) if logprobs else None,
            "prompt_tokens": call.output.usage.prompt_tokens,
            "completion_tokens": call.output.usage.completion_tokens,
            "cost": call.output.cost,
            "latency": call.latency,
            "created_at": call.created_at,
        }

    def _insert_blobs(self, connection: Connection, found: Mapping[str, str]) -> None:
        rows = [{"hash": key, "text": text} for key, text in found.items()]
        connection.execute(self._statements.insert_blobs, rows)

    def _set_tags(
        self, connection: Connection, tape_id: str, tags: Iterable[str], *, new: bool = False
    ) -> None:
        """Make the tape's stored tags `tags` (`new`: the tape has none yet)."""
        wanted = list(dict.fromkeys(tags))
        if not new:
            stored = connection.execute(self._statements.select_tags, {"tape": tape_id})
            if sorted(stored.scalars()) == sorted(wanted):
                return  # the usual case when a run ends: nothing to rewrite
            connection.execute(delete(tape_tags).where(tape_tags.c.tape_id == tape_id))
        if wanted:
            connection.execute(
                self._statements.insert_tags, [{"tape_id": tape_id, "tag": t} for t in wanted]
            )

    def _shared_prefix(self, connection: Connection, tape: Tape[Any, Any]) -> int:
        """How many of the tape's first steps can be read from its stored parent."""
        if not tape.parent_id or not tape.fork_index:
            return 0
        parent_length = connection.execute(
            select(tapes.c.length).where(tapes.c.id == tape.parent_id)
        ).scalar()
        if parent_length is None:
            return 0
        limit = min(tape.fork_index, parent_length, len(tape.steps))
        stored = self._read_steps(connection, tape.parent_id, limit)
        prefix = 0
        for mine, theirs in zip(tape.steps, stored, strict=False):
            if mine.metadata.id != theirs.metadata.id or mine != theirs:
                break
            prefix += 1
        return prefix

    def _check_same_step(self, connection: Connection, tape: Tape[Any, Any], index: int) -> None:
        stored = self._read_steps(connection, tape.id, index + 1, start=index)
        if stored and stored[0].metadata.id != tape.steps[index].metadata.id:
            raise StoreError(
                f"Step {index} of tape {tape.id} differs from the stored one: the tape was "
                "edited. Fork it (store.fork) to keep the edited version."
            )

    # ------------------------------------------------------------------ reading

    def get(self, tape_id: str) -> Tape[Any, Any]:
        """The stored tape with all its steps (a fork's shared prefix included)."""
        with self._read() as connection:
            row = connection.execute(select(tapes).where(tapes.c.id == tape_id)).first()
            if row is None:
                raise self._missing(tape_id)
            tape_steps = self._read_steps(connection, tape_id, row.length)
        return self._tape(row, tape_steps)

    def _tape(self, row: Any, tape_steps: list[Step]) -> Tape[Any, Any]:
        """A tape from its `tapes` row and its steps."""
        try:
            metadata = TapeMetadata.model_validate_json(row.metadata or "{}")
            context = json.loads(row.context) if row.context else None
        except ValueError as error:
            raise StoreError(f"Tape {row.id} has a corrupt header: {error}") from None
        tape: Tape[Any, Any] = Tape(
            id=row.id,
            parent_id=row.parent_id,
            fork_index=row.fork_index,
            author=row.author,
            context=context,
            metadata=metadata,
        )
        tape.steps = tape_steps
        return tape

    def status(self, tape_id: str) -> str | None:
        """The stored status of a tape, or None if it is not stored."""
        with self._read() as connection:
            return connection.execute(select(tapes.c.status).where(tapes.c.id == tape_id)).scalar()

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one tape whose id starts with `prefix` (for the CLI)."""
        with self._read() as connection:
            found = (
                connection.execute(
                    select(tapes.c.id)
                    .where(tapes.c.id.startswith(prefix, autoescape=True))
                    .limit(2)
                )
                .scalars()
                .all()
            )
        if not found:
            raise self._missing(prefix)
        if len(found) > 1:
            raise StoreError(f"Several tapes start with {prefix!r}; give more of the id.")
        return found[0]

    def _read_steps(
        self, connection: Connection, tape_id: str, end: int, start: int = 0
    ) -> list[Step]:
        """Steps [start, end) of a tape, following fork prefixes up the lineage."""
        segments: list[tuple[str, int, int]] = []  # (tape id, from, to)
        current, upto = tape_id, end
        while upto > start:
            row = connection.execute(
                select(tapes.c.parent_id, tapes.c.prefix_length).where(tapes.c.id == current)
            ).first()
            if row is None:
                raise self._missing(current)
            own_from = max(row.prefix_length, start)
            if own_from < upto:
                segments.append((current, own_from, upto))
            if row.prefix_length <= start or row.parent_id is None:
                break
            current, upto = row.parent_id, min(upto, row.prefix_length)
        segments.reverse()
        rows: list[tuple[str, int, str, str]] = []
        for seg_id, seg_from, seg_to in segments:
            result = connection.execute(
                select(steps.c.idx, steps.c.kind, steps.c.data)
                .where(steps.c.tape_id == seg_id, steps.c.idx >= seg_from, steps.c.idx < seg_to)
                .order_by(steps.c.idx)
            )
            rows.extend((seg_id, idx, kind, data) for idx, kind, data in result.all())
        if len(rows) != end - start:
            raise StoreError(
                f"Tape {tape_id} should have {end - start} steps from {start} but the store has "
                f"{len(rows)}: the database was changed outside tapeagents."
            )
        return self._load_steps(connection, rows)

    def _load_steps(
        self, connection: Connection, rows: Sequence[tuple[str, int, str, str]]
    ) -> list[Step]:
        """Steps from `(tape id, index, kind, data)` rows, with their blob texts put back."""
        return parse_steps(rows, self._blob_texts(connection, rows))

    def _blob_texts(
        self, connection: Connection, rows: Sequence[tuple[str, int, str, str]]
    ) -> dict[str, str]:
        """The texts of the blobs that the step rows refer to."""
        refs = {ref for *_, data in rows for ref in find_blob_refs(data)}
        return self._read_blobs(connection, refs) if refs else {}

    def _read_blobs(self, connection: Connection, refs: set[str]) -> dict[str, str]:
        texts: dict[str, str] = {}
        keys = list(refs)
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            query = select(blobs.c.hash, blobs.c.text).where(blobs.c.hash.in_(chunk))
            texts.update((key, text) for key, text in connection.execute(query))
        return texts

    def get_llm_calls(self, ids: Iterable[str]) -> list[LLMCall]:
        """The stored LLM calls with these ids, in the given order (missing ones skipped)."""
        wanted = list(dict.fromkeys(ids))
        rows: dict[str, Any] = {}
        with self._read() as connection:
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                for row in connection.execute(select(llm_calls).where(llm_calls.c.id.in_(chunk))):
                    rows[row.id] = row
            refs: set[str] = set()
            parsed = {
                key: (json.loads(row.prompt), json.loads(row.output)) for key, row in rows.items()
            }
            for prompt, output in parsed.values():
                blob_refs(prompt, refs)
                blob_refs(output, refs)
            texts = self._read_blobs(connection, refs)
        calls = []
        for key in wanted:
            if key not in rows:
                continue
            row = rows[key]
            prompt, output = parsed[key]
            llm_output = LLMOutput.model_validate(internalize(output, texts))
            llm_output.usage = Usage(
                prompt_tokens=row.prompt_tokens or 0, completion_tokens=row.completion_tokens or 0
            )
            if row.logprobs:
                llm_output.logprobs = [TokenLogprob(**lp) for lp in json.loads(row.logprobs)]
            calls.append(
                LLMCall(
                    id=row.id,
                    model=row.model,
                    parameters=json.loads(row.parameters or "{}"),
                    prompt=Prompt.model_validate(internalize(prompt, texts)),
                    output=llm_output,
                    latency=row.latency or 0.0,
                    created_at=row.created_at,
                )
            )
        return calls

    def llm_calls_of(self, tape: Tape[Any, Any]) -> list[LLMCall]:
        """The LLM calls that produced the tape's steps, in tape order."""
        ids = [s.metadata.llm_call_id for s in tape.steps if s.metadata.llm_call_id]
        return self.get_llm_calls(ids)

    def stats(self) -> dict[str, int]:
        """How many rows each table holds: tapes, steps, llm_calls, blobs."""
        counts = {}
        with self._read() as connection:
            for table in (tapes, steps, llm_calls, blobs):
                query = select(func.count()).select_from(table)
                counts[table.name] = int(connection.execute(query).scalar() or 0)
        return counts

    def llm_cache(self) -> MutableMapping[str, LLMOutput]:
        """A mapping from request id to output over the stored calls, for `CachedLLM`."""
        return _StoreCache(self)

    # ------------------------------------------------------------------ listing

    def list(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        task_id: str | None = None,
        outcome: str | None = None,
        limit: int | None = 50,
        offset: int = 0,
    ) -> list[TapeSummary]:
        """Tapes matching all the given filters, newest first (`limit=None` for all of them).

        `text` matches any step's content (case-insensitive on SQLite, case-sensitive on
        PostgreSQL); `since`/`until` bound the creation time (seconds since the epoch).
        """
        query = self._filtered(
            select(tapes), agent, status, tag, since, until, text, task_id, outcome
        )
        query = query.order_by(tapes.c.created_at.desc(), tapes.c.id).limit(limit).offset(offset)
        with self._read() as connection:
            rows = connection.execute(query).all()
            tags: dict[str, list[str]] = {row.id: [] for row in rows}
            if rows:
                for tape_id, tag_value in connection.execute(
                    select(tape_tags.c.tape_id, tape_tags.c.tag).where(
                        tape_tags.c.tape_id.in_(list(tags))
                    )
                ):
                    tags[tape_id].append(tag_value)
        return [self._summary(row, tags[row.id]) for row in rows]

    def count(
        self,
        *,
        agent: str | None = None,
        status: str | None = None,
        tag: str | None = None,
        since: float | None = None,
        until: float | None = None,
        text: str | None = None,
        task_id: str | None = None,
        outcome: str | None = None,
    ) -> int:
        """How many tapes match the filters (see `list`)."""
        query = self._filtered(
            select(func.count()).select_from(tapes),
            agent,
            status,
            tag,
            since,
            until,
            text,
            task_id,
            outcome,
        )
        with self._read() as connection:
            return int(connection.execute(query).scalar() or 0)

    def facets(self, limit: int = 100) -> dict[str, list[tuple[str, int]]]:
        """The values tapes have for `agent`, `status`, `outcome` and `tag`, each with how many
        tapes have it, most common first (at most `limit` per field): what filter menus offer."""
        columns = {"agent": tapes.c.agent, "status": tapes.c.status, "outcome": tapes.c.outcome}
        queries = {
            name: select(column, func.count()).where(column.is_not(None)).group_by(column)
            for name, column in columns.items()
        }
        queries["tag"] = select(tape_tags.c.tag, func.count()).group_by(tape_tags.c.tag)
        result = {}
        with self._read() as connection:
            for name, query in queries.items():
                rows = connection.execute(query).all()
                rows.sort(key=lambda row: (-row[1], row[0]))
                result[name] = [(value, int(count)) for value, count in rows[:limit]]
        return result

    def _filtered(  # type: ignore[no-untyped-def]
        self, query: Any, agent, status, tag, since, until, text, task_id=None, outcome=None
    ) -> Any:
        if task_id is not None:
            query = query.where(tapes.c.task_id == task_id)
        if outcome is not None:
            query = query.where(tapes.c.outcome == outcome)
        if agent is not None:
            query = query.where(tapes.c.agent == agent)
        if status is not None:
            query = query.where(tapes.c.status == status)
        if tag is not None:
            query = query.where(
                tapes.c.id.in_(select(tape_tags.c.tape_id).where(tape_tags.c.tag == tag))
            )
        if since is not None:
            query = query.where(tapes.c.created_at >= since)
        if until is not None:
            query = query.where(tapes.c.created_at < until)
        if text:
            pattern = f"%{text}%"
            direct = select(steps.c.tape_id).where(steps.c.data.like(pattern))
            in_blobs = (
                sql_text(self._statements.steps_citing_blobs)
                .bindparams(pattern=pattern, reference='%"$blob"%')
                .columns(steps.c.tape_id)
            )
            query = query.where(or_(tapes.c.id.in_(direct), tapes.c.id.in_(in_blobs)))
        return query

    @staticmethod
    def _summary(row: Any, tags: list[str]) -> TapeSummary:
        return TapeSummary(
            id=row.id,
            parent_id=row.parent_id,
            fork_index=row.fork_index,
            author=row.author,
            agent=row.agent,
            status=row.status,
            created_at=row.created_at,
            updated_at=row.updated_at,
            length=row.length,
            task_id=row.task_id,
            outcome=row.outcome,
            reward=row.reward,
            tags=sorted(tags),
        )

    def summary(self, tape_id: str) -> TapeSummary:
        """One tape's header."""
        with self._read() as connection:
            row = connection.execute(select(tapes).where(tapes.c.id == tape_id)).first()
            if row is None:
                raise self._missing(tape_id)
            tags = (
                connection.execute(select(tape_tags.c.tag).where(tape_tags.c.tape_id == tape_id))
                .scalars()
                .all()
            )
        return self._summary(row, list(tags))

    # ------------------------------------------------------------------ lineage

    def fork(
        self,
        tape: Tape[Any, Any] | str,
        at: int,
        *,
        edits: Mapping[int, Step] | None = None,
        author: str | None = None,
    ) -> Tape[Any, Any]:
        """A stored child of `tape` with its first `at` steps, some replaced by `edits`.

        The child shares the unedited prefix with its parent instead of copying it, so
        forking costs the same for a short and a very long tape.
        """
        parent = self.get(tape) if isinstance(tape, str) else tape
        if not 0 <= at <= len(parent.steps):
            raise StoreError(
                f"Cannot fork tape {parent.id} at step {at}: it has {len(parent.steps)} steps "
                f"(valid: 0 to {len(parent.steps)})."
            )
        edits = dict(edits or {})
        bad = [i for i in edits if not 0 <= i < at]
        if bad:
            raise StoreError(f"Edits at {bad} fall outside the forked steps 0 to {at - 1}.")
        if self.status(parent.id) is None:
            self.save(parent)
        agent = self.summary(parent.id).agent
        child = parent.fork(at, author=author)
        for index, step in edits.items():
            child.steps[index] = step
        shared = min([at, *edits])  # the unedited prefix is read from the parent, not copied
        with self._write() as connection:
            self._save(connection, child, "forked", agent, (), prefix=shared)
        return child

    def ancestors(self, tape_id: str) -> list[TapeSummary]:
        """The tape's parent, grandparent, ... (nearest first)."""
        result = []
        current = self.summary(tape_id).parent_id
        while current is not None:
            summary = self.summary(current)
            result.append(summary)
            current = summary.parent_id
        return result

    def children(self, tape_id: str) -> list[TapeSummary]:
        """Tapes forked directly from this one, oldest first."""
        with self._read() as connection:
            ids = (
                connection.execute(
                    select(tapes.c.id)
                    .where(tapes.c.parent_id == tape_id)
                    .order_by(tapes.c.created_at)
                )
                .scalars()
                .all()
            )
        return [self.summary(i) for i in ids]

    def tree(self, tape_id: str) -> TapeTree:
        """The whole family of the tape, from its oldest ancestor down."""
        ancestors = self.ancestors(tape_id)
        root = ancestors[-1].id if ancestors else tape_id

        def build(node_id: str) -> TapeTree:
            return TapeTree(
                tape=self.summary(node_id),
                children=[build(child.id) for child in self.children(node_id)],
            )

        return build(root)

    # ------------------------------------------------------------------ annotations

    def annotate(
        self,
        tape_id: str,
        step_index: int | None = None,
        *,
        rating: float | None = None,
        label: str | None = None,
        comment: str | None = None,
        author: str | None = None,
    ) -> Annotation:
        """Record a rating, label and/or comment on a step (or on the tape: `step_index=None`)."""
        if rating is None and not label and not comment:
            raise UsageError("An annotation needs a rating, a label or a comment.")
        with self._write() as connection:
            length = connection.execute(
                select(tapes.c.length).where(tapes.c.id == tape_id)
            ).scalar()
            if length is None:
                raise self._missing(tape_id)
            if step_index is not None and not 0 <= step_index < length:
                raise UsageError(
                    f"Tape {tape_id} has {length} steps; there is no step {step_index}."
                )
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
            connection.execute(insert(annotations).values(**note.model_dump()))
        return note

    def annotations(self, tape_id: str) -> list[Annotation]:
        """The annotations of a tape, oldest first."""
        query = (
            select(annotations)
            .where(annotations.c.tape_id == tape_id)
            .order_by(annotations.c.created_at, annotations.c.id)
        )
        with self._read() as connection:
            rows = connection.execute(query).all()
        return [Annotation.model_validate(row._asdict()) for row in rows]

    def delete_annotation(self, annotation_id: str) -> None:
        """Remove one annotation."""
        with self._write() as connection:
            done = connection.execute(delete(annotations).where(annotations.c.id == annotation_id))
            if done.rowcount == 0:
                raise StoreError(f"No annotation {annotation_id} in the store.")

    # ------------------------------------------------------------------ upkeep

    def delete(self, tape_ids: Iterable[str]) -> int:
        """Delete tapes; children that share their steps get their own copy first."""
        count = 0
        for tape_id in tape_ids:
            with self._write() as connection:
                if (
                    connection.execute(select(tapes.c.id).where(tapes.c.id == tape_id)).first()
                    is None
                ):
                    raise self._missing(tape_id)
                children = connection.execute(
                    select(tapes.c.id, tapes.c.prefix_length).where(tapes.c.parent_id == tape_id)
                ).all()
                for child_id, prefix in children:
                    if prefix:
                        self._materialize(connection, child_id, prefix)
                connection.execute(delete(steps).where(steps.c.tape_id == tape_id))
                connection.execute(delete(tape_tags).where(tape_tags.c.tape_id == tape_id))
                connection.execute(delete(annotations).where(annotations.c.tape_id == tape_id))
                connection.execute(delete(tapes).where(tapes.c.id == tape_id))
                count += 1
        return count

    def delete_where(self, *, older_than: float | None = None, tag: str | None = None) -> int:
        """Delete tapes created before `older_than` (epoch seconds) and/or carrying `tag`."""
        if older_than is None and tag is None:
            raise UsageError("Say which tapes to delete: older_than=..., tag=..., or both.")
        query = self._filtered(select(tapes.c.id), None, None, tag, None, older_than, None)
        with self._read() as connection:
            ids = connection.execute(query).scalars().all()
        return self.delete(ids)

    def _materialize(self, connection: Connection, child_id: str, prefix: int) -> None:
        """Copy the steps a child reads from its parent into the child itself."""
        inherited = self._read_steps(connection, child_id, prefix)
        found: dict[str, str] = {}
        rows = [step_row(child_id, i, step, found) for i, step in enumerate(inherited)]
        if found:
            self._insert_blobs(connection, found)
        if rows:
            connection.execute(self._statements.insert_steps, rows)
        connection.execute(update(tapes).where(tapes.c.id == child_id).values(prefix_length=0))

    def export_jsonl(self, path: str | Path, tape_ids: Iterable[str] | None = None) -> int:
        """Write tapes (with their LLM calls) to a JSONL file, one tape a line."""
        ids = list(tape_ids) if tape_ids is not None else self._all_ids()
        try:
            with open(path, "w", encoding="utf-8") as out:
                for tape_id in ids:
                    out.write(self._export_line(tape_id) + "\n")
        except OSError as error:
            raise StoreError(f"Cannot write {path}: {error.strerror or error}.") from None
        return len(ids)

    def _export_line(self, tape_id: str) -> str:
        tape = self.get(tape_id)
        summary = self.summary(tape_id)
        calls = self.llm_calls_of(tape)
        return json.dumps(
            {
                "tape": tape.model_dump(mode="json"),
                "status": summary.status,
                "agent": summary.agent,
                "llm_calls": [c.model_dump(mode="json") for c in calls],
            },
            ensure_ascii=False,
        )

    def import_jsonl(self, path: str | Path) -> int:
        """Read tapes written by `export_jsonl`; tapes already stored are skipped."""
        count = 0
        try:
            source = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as error:
            raise StoreError(f"Cannot read {path}: {error.strerror or error}.") from None
        with source:
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    tape = Tape.model_validate(record["tape"])
                    calls = [LLMCall.model_validate(c) for c in record.get("llm_calls", [])]
                except (ValueError, KeyError, TypeError) as error:
                    raise StoreError(
                        f"{path}, line {number}: not a tape record ({error})."
                    ) from None
                if self.status(tape.id) is not None:
                    continue
                self.save(
                    tape,
                    status=record.get("status") or "imported",
                    agent=record.get("agent"),
                    llm_calls=calls,
                )
                count += 1
        return count

    def iter_tapes(
        self, tape_ids: Iterable[str] | None = None, *, batch_size: int = 200
    ) -> Iterator[Tape[Any, Any]]:
        """Load tapes in order (all of them by default), `batch_size` tapes per read.

        Reading many tapes in one query costs a fraction of a `get` per tape: exporters and
        evaluations read thousands of tapes a second this way.
        """
        ids = list(tape_ids) if tape_ids is not None else self._all_ids()
        for start in range(0, len(ids), batch_size):
            yield from self._get_many(ids[start : start + batch_size])

    def _get_many(self, tape_ids: Sequence[str]) -> Iterator[Tape[Any, Any]]:
        """Several stored tapes, in the order asked; a fork's shared prefix is read as in `get`.

        The rows are read in one transaction, but each tape's steps are built only when the tape
        is handed out: a batch never lives in memory as objects all at once, which spares the
        garbage collector most of its work (a tenth of an export's time otherwise).
        """
        wanted = list(dict.fromkeys(tape_ids))
        with self._read() as connection:
            rows = {
                row.id: row
                for row in connection.execute(select(tapes).where(tapes.c.id.in_(wanted)))
            }
            for tape_id in wanted:
                if tape_id not in rows:
                    raise self._missing(tape_id)
            own = [i for i in wanted if rows[i].prefix_length == 0 and rows[i].length > 0]
            step_rows: dict[str, list[tuple[str, int, str, str]]] = {i: [] for i in own}
            texts: dict[str, str] = {}
            if own:
                found = connection.execute(
                    select(steps.c.tape_id, steps.c.idx, steps.c.kind, steps.c.data)
                    .where(steps.c.tape_id.in_(own))
                    .order_by(steps.c.tape_id, steps.c.idx)
                ).all()
                texts = self._blob_texts(connection, found)  # type: ignore[arg-type]
                for row in found:
                    step_rows[row[0]].append(row)  # type: ignore[arg-type]
                for tape_id in own:
                    if len(step_rows[tape_id]) != rows[tape_id].length:
                        raise StoreError(
                            f"Tape {tape_id} should have {rows[tape_id].length} steps but the "
                            f"store has {len(step_rows[tape_id])}: the database was changed "
                            "outside tapeagents."
                        )
            forks = {
                tape_id: self._read_steps(connection, tape_id, rows[tape_id].length)
                for tape_id in wanted
                if rows[tape_id].prefix_length > 0  # a fork: read through its lineage
            }
        for tape_id in tape_ids:
            if tape_id in forks:
                tape_steps = list(forks[tape_id])
            else:
                tape_steps = parse_steps(step_rows.get(tape_id, ()), texts)
            yield self._tape(rows[tape_id], tape_steps)

    def _all_ids(self) -> list[str]:
        with self._read() as connection:
            return list(
                connection.execute(select(tapes.c.id).order_by(tapes.c.created_at)).scalars()
            )

    # ------------------------------------------------------------------ helpers

    def _write(self) -> Any:
        return Transaction(self, write=True)

    def _read(self) -> Any:
        return Transaction(self, write=False)

    def _missing(self, tape_id: str) -> StoreError:
        return StoreError(
            f"No tape {tape_id!r} in {self.display_url}. `tapeagents ls` lists the stored tapes."
        )

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> TapeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TapeStore({self.display_url!r})"


class _StoreCache(MutableMapping[str, LLMOutput]):
    def __init__(self, store: TapeStore) -> None:
        self.store = store

    def __getitem__(self, key: str) -> LLMOutput:
        found = self.store.get_llm_calls([key])
        if not found:
            raise KeyError(key)
        return found[0].output

    def __setitem__(self, key: str, value: LLMOutput) -> None:
        raise UsageError("The store's LLM cache is filled by runs with store=...; it is read-only.")

    def __delitem__(self, key: str) -> None:
        raise UsageError("The store's LLM cache is read-only.")

    def __iter__(self) -> Iterator[str]:
        with self.store.engine.connect() as connection:
            yield from connection.execute(select(llm_calls.c.id)).scalars()

    def __len__(self) -> int:
        with self.store.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(llm_calls)).scalar() or 0
            )
