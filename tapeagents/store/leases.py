"""Leases on running tapes: at most one live run per tape.

A run takes its tape's lease when it starts, in the transaction that marks the tape "running"
(`TapeStore.astart_run`), renews it every third of its time to live while it runs (`Lease.
keep_alive`, a task on the run's event loop: no cost per step), and releases it when it ends,
however it ends (`TapeStore.aend_run`, which records the end in the same transaction, or
`Lease.arelease` after an error or a cancellation). Any other run on the tape (a second `run`,
`tapeagents resume`, the studio, a batch run again) is refused with `LeaseHeld` while the lease
is alive, so it can neither write a false "interrupted" observation nor break the live run.
`force=True` takes the lease over anyway: the run that held it fails at its next write, or ends
without recording its end.

A killed run cannot release its lease: it lapses `ttl` seconds after the last renewal
(`TAPEAGENTS_LEASE_SECONDS`, 30 by default), and the tape can then be resumed as an
interrupted one.

Clock: expiry is decided by the database's clock, evaluated in SQL (`julianday('now')` on
SQLite, `clock_timestamp()` on PostgreSQL), so runs on machines whose clocks disagree still
agree on whether a lease lapsed. The holder times its renewals on the event loop's monotonic
clock, so a jump of its own wall clock changes nothing; a jump of the database's clock of more
than two thirds of the time to live could end a lease early.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Float, bindparam, delete, literal_column, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from tapeagents.errors import LeaseHeld, StoreError, UsageError
from tapeagents.store.engine import Database
from tapeagents.store.schema import leases

__all__ = [
    "DEFAULT_TTL",
    "TTL_VARIABLE",
    "Lease",
    "LeaseHolder",
    "acquire",
    "default_ttl",
    "held_error",
    "holder",
    "holders",
    "lost_error",
    "release",
    "renew",
]

T = TypeVar("T")

DEFAULT_TTL = 30.0
"""Seconds a lease lives after its last renewal, unless `TAPEAGENTS_LEASE_SECONDS` says."""

TTL_VARIABLE = "TAPEAGENTS_LEASE_SECONDS"


def default_ttl() -> float:
    """The lease time to live: `$TAPEAGENTS_LEASE_SECONDS`, else 30 seconds."""
    text = os.environ.get(TTL_VARIABLE)
    if not text:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        ttl = 0.0
    if not ttl > 0 or ttl == float("inf"):
        raise UsageError(
            f"{TTL_VARIABLE}={text!r} is not a number of seconds; set it to a positive number "
            f"such as 30 (how long a killed run keeps its tape), or unset it."
        )
    return ttl


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    """The run that holds (or last held) a tape's lease, as the store has it."""

    tape_id: str
    run_id: str
    host: str
    pid: int
    acquired_at: float
    expires_at: float
    expires_in: float
    """Seconds until the lease lapses, by the database's clock when it was read (<= 0: it has)."""

    @property
    def alive(self) -> bool:
        """Whether the lease still holds the tape (its run renewed it within its time to live)."""
        return self.expires_in > 0

    def describe(self) -> str:
        """Who holds it, for messages: "pid 4242 on build-3 (run 1f2e3d4c5b6a7988)"."""
        return f"pid {self.pid} on {self.host} (run {self.run_id})"


@functools.cache
def _statements(dialect: str) -> _Statements:
    return _Statements(dialect)


class _Statements:
    """The lease statements of one SQL dialect, built once."""

    def __init__(self, dialect: str) -> None:
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert

            now = literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert  # type: ignore[assignment]

            now = literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS FLOAT8)", Float)
        ttl: ColumnElement[float] = bindparam("ttl", type_=Float)
        by_run = (leases.c.tape_id == bindparam("tape"), leases.c.run_id == bindparam("run"))
        new = dialect_insert(leases).values(
            tape_id=bindparam("tape"),
            run_id=bindparam("run"),
            host=bindparam("host"),
            pid=bindparam("pid"),
            acquired_at=now,
            expires_at=now + ttl,
        )
        taken = {
            name: new.excluded[name]
            for name in ("run_id", "host", "pid", "acquired_at", "expires_at")
        }
        # an INSERT's rowcount is kept only when asked for (psycopg otherwise reports -1)
        self.take = new.on_conflict_do_update(
            index_elements=["tape_id"],
            set_=taken,
            where=or_(leases.c.expires_at <= now, leases.c.run_id == new.excluded.run_id),
        ).execution_options(preserve_rowcount=True)
        """Take the lease if it is free, lapsed or already this run's (1 row changed) or not (0)."""
        self.force = new.on_conflict_do_update(
            index_elements=["tape_id"], set_=taken
        ).execution_options(preserve_rowcount=True)
        self.renew = update(leases).where(*by_run).values(expires_at=now + ttl)
        self.release = delete(leases).where(*by_run)
        self.read = select(
            leases.c.tape_id,
            leases.c.run_id,
            leases.c.host,
            leases.c.pid,
            leases.c.acquired_at,
            leases.c.expires_at,
            (leases.c.expires_at - now).label("expires_in"),
        )
        self.read_one = self.read.where(leases.c.tape_id == bindparam("tape"))
        self.read_many = self.read.where(leases.c.tape_id.in_(bindparam("tapes", expanding=True)))


def _holder(row: Any) -> LeaseHolder:
    return LeaseHolder(
        tape_id=row.tape_id,
        run_id=row.run_id,
        host=row.host,
        pid=int(row.pid),
        acquired_at=float(row.acquired_at),
        expires_at=float(row.expires_at),
        expires_in=float(row.expires_in),
    )


def holder(connection: Connection, tape_id: str) -> LeaseHolder | None:
    """The stored lease of the tape (alive or lapsed), or None."""
    row = connection.execute(_statements(connection.dialect.name).read_one, {"tape": tape_id})
    found = row.first()
    return None if found is None else _holder(found)


def holders(connection: Connection, tape_ids: Iterable[str]) -> dict[str, LeaseHolder]:
    """The stored leases (alive or lapsed) of these tapes, by tape id."""
    wanted = list(dict.fromkeys(tape_ids))
    if not wanted:
        return {}
    statement = _statements(connection.dialect.name).read_many
    return {row.tape_id: _holder(row) for row in connection.execute(statement, {"tapes": wanted})}


def held_error(holding: LeaseHolder) -> LeaseHeld:
    """The refusal of a run on a tape that `holding` holds: who, until when, what to do."""
    return LeaseHeld(
        f"Tape {holding.tape_id} is being run by {holding.describe()}: its lease expires in "
        f"{max(holding.expires_in, 0.0):.0f} s unless that run renews it. Wait for that run "
        "to finish, or, if it was killed, for its lease to expire; or take the tape over with "
        "`tapeagents resume --force` (force=True in Python), and the other run, if it is still "
        "alive, fails at its next write.",
        tape_id=holding.tape_id,
        run_id=holding.run_id,
        expires_in=max(holding.expires_in, 0.0),
    )


def acquire(
    connection: Connection, lease: Lease, *, force: bool = False, attempts: int = 3
) -> None:
    """Take `lease`'s tape for its run, in the caller's transaction.

    Raises:
        LeaseHeld: Another run holds a live lease on the tape (and `force` is False).
    """
    statements = _statements(connection.dialect.name)
    values = {
        "tape": lease.tape_id,
        "run": lease.run_id,
        "host": lease.host,
        "pid": lease.pid,
        "ttl": lease.ttl,
    }
    for _ in range(attempts):  # on PostgreSQL the holder may release between the two statements
        if connection.execute(statements.force if force else statements.take, values).rowcount:
            return
        holding = holder(connection, lease.tape_id)
        if holding is not None and holding.alive:
            raise held_error(holding)
    raise StoreError(
        f"Could not take the lease on tape {lease.tape_id} in {attempts} attempts: other runs "
        "keep taking and releasing it. Try again."
    )


def renew(connection: Connection, lease: Lease) -> bool:
    """Extend the lease by its time to live from now; False if the run no longer holds it."""
    values = {"tape": lease.tape_id, "run": lease.run_id, "ttl": lease.ttl}
    return bool(connection.execute(_statements(connection.dialect.name).renew, values).rowcount)


def release(connection: Connection, lease: Lease) -> bool:
    """Remove the lease; False if the run no longer held it (another run took it over)."""
    values = {"tape": lease.tape_id, "run": lease.run_id}
    return bool(connection.execute(_statements(connection.dialect.name).release, values).rowcount)


def lost_error(lease: Lease, holding: LeaseHolder | None) -> LeaseHeld:
    """The error of a run whose lease another run took over."""
    by = holding.describe() if holding is not None else "another run, which has ended since"
    return LeaseHeld(
        f"Run {lease.run_id} no longer holds tape {lease.tape_id}: {by} took it over (with "
        "force, or after this run had not renewed its lease for longer than its time to live). "
        "This run stopped without recording its end; the tape is that run's now.",
        tape_id=lease.tape_id,
        run_id=holding.run_id if holding is not None else "",
        expires_in=max(holding.expires_in, 0.0) if holding is not None else 0.0,
    )


AsyncWrite = Callable[[Callable[[Connection], T]], Awaitable[T]]


class Lease:
    """One run's hold on one tape; from `TapeStore.lease` or `TapeStore.astart_run`.

    `renew` and `release` (and `arenew`, `arelease` from an event loop) act on the store;
    `keep_alive` renews it in the background until it is released. It is a context manager
    that releases it. `renew` raises `LeaseHeld` once another run has taken the tape over.

    Args:
        database: The store's database.
        awrite: How the store writes from an event loop (its group commit).
        tape_id: The tape.
        ttl: Seconds the lease lives after each renewal.
    """

    def __init__(
        self, database: Database, awrite: Callable[[], AsyncWrite[Any]], tape_id: str, ttl: float
    ) -> None:
        self.database = database
        self._awrite = awrite
        self.tape_id = tape_id
        self.ttl = ttl
        self.run_id = secrets.token_hex(8)
        self.host = socket.gethostname()[:255]
        self.pid = os.getpid()
        self.lost = False
        """True once the store showed that another run took the tape over."""
        self.released = False
        self._heartbeat: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Lease(tape={self.tape_id!r}, run={self.run_id!r}, ttl={self.ttl})"

    # ------------------------------------------------------------------ renewing

    def renew(self) -> None:
        """Extend the lease by `ttl` seconds from now.

        Raises:
            LeaseHeld: Another run took the tape over.
        """
        with self.database.write() as connection:
            if not renew(connection, self):
                self.lost = True
                raise lost_error(self, holder(connection, self.tape_id))

    async def arenew(self) -> None:
        """`renew` from an event loop, committed with the loop's other writes."""

        def write(connection: Connection) -> LeaseHolder | None | bool:
            return renew(connection, self) or holder(connection, self.tape_id)

        result = await self._awrite()(write)
        if result is not True:
            self.lost = True
            raise lost_error(self, result if isinstance(result, LeaseHolder) else None)

    def keep_alive(self) -> None:
        """Renew the lease every third of its time to live, in a task of the running event
        loop, until it is released or lost. A failed renewal (the database unreachable for a
        moment) is tried again at the next beat."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._beat(), name=f"lease on tape {self.tape_id}"
            )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.arenew()
            except LeaseHeld:
                return
            except StoreError:
                continue  # the run's own writes report a store that stays unreachable

    def _stop_beating(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None and heartbeat is not _current_task():
            heartbeat.cancel()

    # ------------------------------------------------------------------ releasing

    def release(self) -> None:
        """Give the tape up (a no-op once released, or when another run took it over)."""
        self._stop_beating()
        if self.released:
            return
        with self.database.write() as connection:
            released = release(connection, self)
        self.released = True
        self.lost = not released or self.lost

    async def arelease(self) -> None:
        """`release` from an event loop, committed with the loop's other writes."""
        self._stop_beating()
        if self.released:
            return
        released = await self._awrite()(lambda connection: release(connection, self))
        self.released = True
        self.lost = not released or self.lost

    async def aend(self, end: Callable[[Connection], None]) -> None:
        """Release the lease and, in the same transaction, run `end` (record how the run
        ended), only if this run still held the tape.

        Raises:
            LeaseHeld: Another run took the tape over; `end` did not run.
        """
        self._stop_beating()
        if self.released:
            raise AssertionError(f"{self!r} was already released")

        def write(connection: Connection) -> LeaseHolder | None | bool:
            if not release(connection, self):
                return holder(connection, self.tape_id)
            end(connection)
            return True

        result = await self._awrite()(write)  # if it fails, `arelease` may still release it
        self.released = True
        if result is not True:
            self.lost = True
            raise lost_error(self, result if isinstance(result, LeaseHolder) else None)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _current_task() -> asyncio.Task[Any] | None:
    with contextlib.suppress(RuntimeError):
        return asyncio.current_task()
    return None
