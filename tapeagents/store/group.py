"""Group commit: the writes that concurrent runs of one event loop make, committed together.

A batch of 64 sessions appends a step every couple of milliseconds. Committing each step in
its own transaction makes the commit (and, on PostgreSQL, its round trips and the flush to
disk) the largest cost of a stored run. Instead, the writes queued while the event loop is busy
share one transaction; each writer still waits until its own write is committed, so a step is
durable before it is reported, exactly as with one transaction per write.

Each write gets exactly one outcome. If one of the writes' own statements fails (say another
process appended to that tape), each write is retried in a transaction of its own, so the
conflicting write fails alone. If the COMMIT itself fails (a full disk, a deferred constraint),
every write the group held fails with the database's error and none is retried: a retry could
see its own first attempt, or report as stored what the database does not hold. The failed
transaction's connection goes back to the pool, which rolls it back (SQLite may leave a
transaction open after a failed COMMIT) or, if that fails too, discards it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from tapeagents.store.engine import Database

__all__ = ["GroupCommit"]

T = TypeVar("T")
Write = Callable[[Connection], Any]
"""A write: it runs in a transaction and its result goes to the writer that queued it."""
Queued = tuple[Write, asyncio.Future[Any]]
Outcome = tuple[bool, Any]
"""(True, the write's result) or (False, the exception it raised)."""

WAIT_TURNS = 2
"""Turns of the event loop a group gathers writes before it commits. An idle loop turns in
microseconds, so a lone write is not held up; a busy one gathers more writes per transaction.
More turns gather more writes but hold every step longer (docs/benchmarks.md has the
measurements behind this choice)."""


class GroupCommit:
    """The queue of one event loop's writes to one store (see the module docstring).

    It opens its transactions through `database`. On SQLite (`database.writes_inline`) a group
    is committed in the loop itself, once the callbacks that are ready have run; elsewhere in a
    worker thread, while the next group gathers.
    """

    def __init__(self, database: Database, loop: asyncio.AbstractEventLoop) -> None:
        self.database = database
        self.loop = loop
        self._queue: list[Queued] = []
        self._scheduled = False
        self._waited = 0
        self.groups = 0
        """Transactions committed so far (for benchmarks and tests)."""
        self.writes = 0
        """Writes committed so far."""

    async def write(self, write: Callable[[Connection], T]) -> T:
        """Run `write` in the next group's transaction; return once it is committed.

        A cancelled caller still waits for its write to finish, so the store never changes
        behind its back after the cancellation goes on.
        """
        done: asyncio.Future[T] = self.loop.create_future()
        self._queue.append((write, done))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._start)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if not done.done():
                await asyncio.wait([done])
            raise

    def _start(self) -> None:
        if self._waited < WAIT_TURNS:
            self._waited += 1  # for the writers that woke up with this one
            self.loop.call_soon(self._start)
            return
        self._waited = 0
        group, self._queue = self._queue, []
        if self.database.writes_inline:
            self._scheduled = False
            self._finish(group, self._commit(group))
            return
        thread = self.loop.run_in_executor(None, self._commit, group)
        thread.add_done_callback(lambda outcome: self._threaded_done(group, outcome))

    def _threaded_done(self, group: list[Queued], outcome: asyncio.Future[list[Outcome]]) -> None:
        try:
            error = outcome.exception()  # `_commit` catches failures; this is for the unforeseen
            self._finish(group, [(False, error)] * len(group) if error else outcome.result())
        finally:  # whatever happened, the queue goes on (a stuck flag would hang every writer)
            if self._queue:  # gathered while the thread was committing
                self.loop.call_soon(self._start)
            else:
                self._scheduled = False

    def _commit(self, group: list[Queued]) -> list[Outcome]:
        """Commit the group in one transaction; if a write's own statements fail, each write
        alone (see the module docstring)."""
        writes = [write for write, _ in group]
        if len(writes) > 1:
            try:
                return self._transaction(writes)
            except Exception:  # noqa: BLE001 - each write is retried alone and reports its own
                pass
        outcomes: list[Outcome] = []
        for write in writes:
            try:
                outcomes.extend(self._transaction([write]))
            except Exception as error:  # noqa: BLE001 - handed to the writer that queued it
                outcomes.append((False, error))
        return outcomes

    def _transaction(self, writes: list[Write]) -> list[Outcome]:
        """Run `writes` in one transaction: one outcome each. Raises what a write raised; a
        failed COMMIT becomes every write's outcome instead (it is not the writes' fault, and
        retrying them could report data as stored that the database does not hold)."""
        results: list[Any] = []
        ran = False
        try:
            with self.database.write() as connection:
                results = [write(connection) for write in writes]
                ran = True
        except Exception as error:
            if not ran:
                raise
            return [(False, error)] * len(writes)
        self.groups += 1
        self.writes += len(writes)
        return [(True, result) for result in results]

    @staticmethod
    def _finish(group: list[Queued], outcomes: list[Outcome]) -> None:
        for (_, done), (ok, value) in zip(group, outcomes, strict=True):
            if done.cancelled():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)
