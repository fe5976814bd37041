"""`TapeStore`: tapes, their steps and LLM calls in SQLite or PostgreSQL, written as they happen.

Every `append_steps` is one transaction, so a process killed at any point leaves each stored
tape a valid prefix of what it was. Forks store only what differs from their parent: a child
reads its parent's first `prefix_length` steps, so forking a long tape writes one row.

`TapeStore` is the one entry point; the work is done by modules named for what they do:

    engine.py       the database: engine, transactions, prebuilt statements (`Database`)
    migrate.py      schema upgrades on open (Alembic)
    writes.py       save, append steps, LLM calls, run status (the hot path)
    group.py        group commit of an event loop's writes
    reads.py        get, iter_tapes, summaries, LLM calls, the LLM cache
    queries.py      list, count and facets by `TapeFilter` (filters.py)
    lineage.py      fork, ancestors, children, tree, delete
    leases.py       the lease a run holds on its tape (one live run per tape)
    annotations.py  ratings, labels and comments
    transfer.py     JSONL export and import
    rows.py, blobs.py, schema.py, records.py: rows, long texts, tables, returned records
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from tapeagents.errors import CorruptTapeError, StoreError, UsageError
from tapeagents.llms.base import LLMCall, LLMOutput
from tapeagents.steps import Step
from tapeagents.store import annotations as annotating
from tapeagents.store import leases, lineage, migrate, queries, reads, transfer, writes
from tapeagents.store.engine import Database
from tapeagents.store.filters import TapeFilter
from tapeagents.store.group import GroupCommit
from tapeagents.store.leases import Lease, LeaseHolder
from tapeagents.store.records import Annotation, TapeSummary, TapeTree
from tapeagents.tape import Tape, TapeMetadata

__all__ = ["DEFAULT_URL", "Annotation", "TapeFilter", "TapeStore", "TapeSummary", "TapeTree"]

DEFAULT_URL = "sqlite:///tapes.db"

_NO_FILTER = TapeFilter()


class TapeStore:
    """Durable storage of tapes, steps and LLM calls.

    Args:
        url: A SQLAlchemy URL (`sqlite:///tapes.db`, `postgresql+psycopg://user@host/db`) or a
            file path for SQLite. Default: `$TAPEAGENTS_DB`, else `./tapes.db`.
        upgrade: Bring the schema to this version of tapeagents on open (Alembic migrations).
        lease_seconds: How long a run's lease on its tape outlives the run's last heartbeat (a
            killed run keeps its tape that long). Default: `$TAPEAGENTS_LEASE_SECONDS`, else 30.

    One store can be shared by threads; several processes may append to one database.

    Example:
        >>> store = TapeStore("sqlite:///:memory:")
        >>> tape = Tape(steps=[UserMessage(content="hi")])
        >>> store.save(tape)
        >>> store.get(tape.id).steps == tape.steps
        True
    """

    def __init__(
        self, url: str | None = None, *, upgrade: bool = True, lease_seconds: float | None = None
    ) -> None:
        url = url or os.environ.get("TAPEAGENTS_DB") or DEFAULT_URL
        if "://" not in url:
            url = f"sqlite:///{url}"
        self.url = url
        self.database = Database(url)
        """The engine, transactions and prebuilt statements every part of the store shares."""
        self.engine = self.database.engine
        self.display_url = self.database.display_url
        self.writes_inline = self.database.writes_inline
        """SQLite writes take well under a millisecond: callers in an event loop may make them
        directly rather than through a worker thread."""
        if lease_seconds is not None and not 0 < lease_seconds < float("inf"):
            raise UsageError(f"lease_seconds must be a positive number, not {lease_seconds!r}.")
        self.lease_seconds = lease_seconds or leases.default_ttl()
        """How long a run's lease outlives its last renewal (see `lease`)."""
        self._groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit] = (
            weakref.WeakKeyDictionary()
        )
        try:
            self.database.check_reachable()
            if upgrade:
                self.upgrade()
        except BaseException:  # a store that cannot be opened keeps no connection open
            self.engine.dispose()
            raise

    # ------------------------------------------------------------------ schema

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None for an empty database)."""
        return migrate.schema_revision(self.database)

    def upgrade(self) -> None:
        """Apply the migrations the database lacks (a no-op when it is current)."""
        migrate.upgrade(self.database)

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
        with self.database.write() as connection:
            return writes.save_tape(
                self.database, connection, tape, status=status, agent=agent, llm_calls=llm_calls
            )

    async def asave(
        self,
        tape: Tape[Any, Any],
        *,
        status: str | None = None,
        agent: str | None = None,
        llm_calls: Sequence[LLMCall] = (),
    ) -> str | None:
        """`save` from an event loop, committed together with the loop's other writes."""
        database = self.database
        return await self._group().write(
            lambda connection: writes.save_tape(
                database, connection, tape, status=status, agent=agent, llm_calls=llm_calls
            )
        )

    def append_steps(
        self,
        tape_id: str,
        start: int,
        new_steps: Sequence[Step],
        llm_calls: Sequence[LLMCall] = (),
    ) -> None:
        """Append steps at index `start` (the stored length) in one transaction.

        Raises `StoreConflict` (a `StoreError`) if the stored tape does not have exactly
        `start` steps, which means another process appended to it meanwhile.
        """
        with self.database.write() as connection:
            writes.append_steps(self.database, connection, tape_id, start, new_steps, llm_calls)

    async def aappend_steps(
        self,
        tape_id: str,
        start: int,
        new_steps: Sequence[Step],
        llm_calls: Sequence[LLMCall] = (),
    ) -> None:
        """`append_steps` from an event loop, committed together with the loop's other
        writes; it returns once the steps are committed."""
        database = self.database
        await self._group().write(
            lambda connection: writes.append_steps(
                database, connection, tape_id, start, new_steps, llm_calls
            )
        )

    def save_llm_calls(self, calls: Sequence[LLMCall]) -> None:
        """Store LLM calls (calls already stored are kept as they are)."""
        with self.database.write() as connection:
            writes.insert_calls(self.database, connection, calls)

    async def asave_llm_calls(self, calls: Sequence[LLMCall]) -> None:
        """`save_llm_calls` from an event loop, committed with the loop's other writes."""
        database = self.database
        await self._group().write(
            lambda connection: writes.insert_calls(database, connection, calls)
        )

    def set_status(
        self, tape_id: str, status: str, *, metadata: TapeMetadata | None = None
    ) -> None:
        """Record how a run on the tape ended (and the tape's result, error and tags)."""
        with self.database.write() as connection:
            writes.set_status(self.database, connection, tape_id, status, metadata)

    async def aset_status(
        self, tape_id: str, status: str, *, metadata: TapeMetadata | None = None
    ) -> None:
        """`set_status` from an event loop, committed with the loop's other writes."""
        database = self.database
        await self._group().write(
            lambda connection: writes.set_status(database, connection, tape_id, status, metadata)
        )

    def _group(self) -> GroupCommit:
        """The group commit of the running event loop (one per loop, made on first use)."""
        loop = asyncio.get_running_loop()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = GroupCommit(self.database, loop)
        return group

    # ------------------------------------------------------------------ leases

    def lease(self, tape_id: str, *, ttl: float | None = None, force: bool = False) -> Lease:
        """Take the tape's lease: no other run may run on it until the lease is released or
        lapses, `ttl` seconds (default `lease_seconds`) after its last `renew`.

        `run(..., store=...)` does this itself (`astart_run`); take a lease by hand to keep
        runs off a tape while a tool of yours changes it. `with store.lease(id):` releases it.

        Raises:
            LeaseHeld: A live run holds the tape; the message names it and when its lease
                expires. `force=True` takes the lease over anyway.
        """
        lease = self._new_lease(tape_id, ttl)
        with self.database.write() as connection:
            leases.acquire(connection, lease, force=force)
        return lease

    def lease_holder(self, tape_id: str) -> LeaseHolder | None:
        """The run holding a live lease on the tape (host, pid, run id, expiry), or None."""
        with self.database.read() as connection:
            found = leases.holder(connection, tape_id)
        return found if found is not None and found.alive else None

    def lease_holders(self, tape_ids: Iterable[str]) -> dict[str, LeaseHolder]:
        """The runs holding live leases on any of these tapes, by tape id (for listings)."""
        with self.database.read() as connection:
            found = leases.holders(connection, tape_ids)
        return {tape_id: held for tape_id, held in found.items() if held.alive}

    async def astart_run(
        self, tape: Tape[Any, Any], *, agent: str | None, force: bool = False
    ) -> tuple[str | None, Lease]:
        """Take the tape's lease and save it with status "running", in one transaction, then
        keep the lease alive until `aend_run` (what `run` does when it starts).

        Returns:
            The tape's stored status before (None: the tape is new; "running": the run before
            was interrupted) and the lease.

        Raises:
            LeaseHeld: A live run holds the tape (unless `force`); nothing was written.
        """
        lease = self._new_lease(tape.id, None)
        database = self.database

        def start(connection: Connection) -> str | None:
            leases.acquire(connection, lease, force=force)
            return writes.save_tape(
                database, connection, tape, status="running", agent=agent, llm_calls=()
            )

        try:
            before = await self._group().write(start)
        except asyncio.CancelledError:  # the write committed all the same: give the tape up
            with contextlib.suppress(StoreError):
                await lease.arelease()
            raise
        lease.keep_alive()
        return before, lease

    async def aend_run(
        self, lease: Lease, status: str, *, metadata: TapeMetadata | None = None
    ) -> None:
        """Record how the run ended (`set_status`) and release its lease, in one transaction.

        Raises:
            LeaseHeld: Another run took the tape over meanwhile (`force`); the status was
                left to that run.
        """
        database = self.database
        await lease.aend(
            lambda connection: writes.set_status(
                database, connection, lease.tape_id, status, metadata
            )
        )

    def _new_lease(self, tape_id: str, ttl: float | None) -> Lease:
        if ttl is not None and not 0 < ttl < float("inf"):
            raise UsageError(f"A lease's ttl must be a positive number of seconds, not {ttl!r}.")
        return Lease(self.database, lambda: self._group().write, tape_id, ttl or self.lease_seconds)

    # ------------------------------------------------------------------ reading

    def get(self, tape_id: str) -> Tape[Any, Any]:
        """The stored tape with all its steps (a fork's shared prefix included)."""
        return reads.get(self.database, tape_id)

    def iter_tapes(
        self,
        tape_ids: Iterable[str] | None = None,
        *,
        batch_size: int = 200,
        on_unreadable: Callable[[CorruptTapeError], None] | None = None,
    ) -> Iterator[Tape[Any, Any]]:
        """Load tapes in order (all of them by default), `batch_size` tapes per read.

        Reading many tapes in one query costs a fraction of a `get` per tape: exporters and
        evaluations read thousands of tapes a second this way. A damaged tape raises
        `CorruptTapeError` when reached, or is handed to `on_unreadable` and skipped.
        """
        return reads.iter_tapes(
            self.database, tape_ids, batch_size=batch_size, on_unreadable=on_unreadable
        )

    def status(self, tape_id: str) -> str | None:
        """The stored status of a tape, or None if it is not stored."""
        return reads.status(self.database, tape_id)

    def summary(self, tape_id: str) -> TapeSummary:
        """One tape's header."""
        return reads.summary(self.database, tape_id)

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one tape whose id starts with `prefix` (for the CLI)."""
        return reads.resolve_id(self.database, prefix)

    def get_llm_calls(self, ids: Iterable[str]) -> builtins.list[LLMCall]:
        """The stored LLM calls with these ids, in the given order (missing ones skipped)."""
        return reads.get_llm_calls(self.database, ids)

    def llm_calls_of(self, tape: Tape[Any, Any]) -> builtins.list[LLMCall]:
        """The LLM calls that produced the tape's steps, in tape order."""
        return reads.llm_calls_of(self.database, tape)

    def llm_cache(self) -> MutableMapping[str, LLMOutput]:
        """A mapping from request id to output over the stored calls, for `CachedLLM`."""
        return reads.StoreCache(self.database)

    def stats(self) -> dict[str, int]:
        """How many rows each table holds: tapes, steps, llm_calls, blobs."""
        return reads.stats(self.database)

    # ------------------------------------------------------------------ finding tapes

    def list(
        self,
        filter: TapeFilter | None = None,
        *,
        limit: int | None = 50,
        offset: int = 0,
    ) -> builtins.list[TapeSummary]:
        """The tapes passing `filter` (all of them by default), newest first: one page of
        `limit` tapes after the first `offset` (`limit=None` for all of them).

        Example: `store.list(TapeFilter(agent="calc", status="stopped"), limit=20)`.
        """
        return queries.list_tapes(self.database, filter or _NO_FILTER, limit=limit, offset=offset)

    def count(self, filter: TapeFilter | None = None) -> int:
        """How many tapes pass `filter` (all of them by default)."""
        return queries.count_tapes(self.database, filter or _NO_FILTER)

    def facets(self, limit: int = 100) -> dict[str, builtins.list[tuple[str, int]]]:
        """The values tapes have for `agent`, `status`, `outcome` and `tag`, each with how many
        tapes have it, most common first (at most `limit` per field): what filter menus offer."""
        return queries.facets(self.database, limit=limit)

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
        return lineage.fork(self.database, parent, at, edits=edits, author=author)

    def ancestors(self, tape_id: str) -> builtins.list[TapeSummary]:
        """The tape's parent, grandparent, ... (nearest first)."""
        return lineage.ancestors(self.database, tape_id)

    def children(self, tape_id: str) -> builtins.list[TapeSummary]:
        """Tapes forked directly from this one, oldest first."""
        return lineage.children(self.database, tape_id)

    def tree(self, tape_id: str) -> TapeTree:
        """The whole family of the tape, from its oldest ancestor down."""
        return lineage.tree(self.database, tape_id)

    def delete(self, tape_ids: Iterable[str]) -> int:
        """Delete tapes; children that share their steps get their own copy first."""
        return lineage.delete(self.database, tape_ids)

    def delete_where(self, filter: TapeFilter) -> int:
        """Delete the tapes passing `filter`, for example
        `TapeFilter(until=time.time() - 30 * 86400, tag="scratch")`."""
        if filter.is_empty:
            raise UsageError(
                "Say which tapes to delete: a TapeFilter with at least one field set "
                "(for example until=..., tag=...)."
            )
        return lineage.delete(self.database, queries.matching_ids(self.database, filter))

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
        return annotating.annotate(
            self.database,
            tape_id,
            step_index,
            rating=rating,
            label=label,
            comment=comment,
            author=author,
        )

    def annotations(self, tape_id: str) -> builtins.list[Annotation]:
        """The annotations of a tape, oldest first."""
        return annotating.annotations_of(self.database, tape_id)

    def delete_annotation(self, annotation_id: str) -> None:
        """Remove one annotation."""
        annotating.delete_annotation(self.database, annotation_id)

    # ------------------------------------------------------------------ files

    def export_jsonl(self, path: str | Path, tape_ids: Iterable[str] | None = None) -> int:
        """Write tapes (with their LLM calls) to a JSONL file, one tape a line."""
        return transfer.export_jsonl(self.database, path, tape_ids)

    def import_jsonl(self, path: str | Path) -> int:
        """Read tapes written by `export_jsonl`; tapes already stored are skipped."""
        return transfer.import_jsonl(self.database, path)

    # ------------------------------------------------------------------ connections

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def __enter__(self) -> TapeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TapeStore({self.display_url!r})"
