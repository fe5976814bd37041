"""Engines and transactions of the tape store: SQLite pragmas, PostgreSQL drivers, and database
failures turned into `StoreError`s that name the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from tapeagents.errors import StoreError, UsageError

if TYPE_CHECKING:
    from tapeagents.store.store import TapeStore

__all__ = ["Transaction", "create_store_engine", "reason"]


class Transaction:
    """A connection (in a transaction when writing) whose database failures become
    `StoreError`s that name the store."""

    def __init__(self, store: TapeStore, *, write: bool) -> None:
        self.store = store
        self.verb = "write to" if write else "read from"
        self.write = write
        self._context: Any = None

    def _error(self, error: SQLAlchemyError) -> StoreError:
        return StoreError(
            f"Cannot {self.verb} the tape store at {self.store.display_url}: {reason(error)}"
        )

    def __enter__(self) -> Connection:
        engine = self.store.engine
        try:
            self._context = engine.begin() if self.write else engine.connect()
            return self._context.__enter__()
        except SQLAlchemyError as error:
            raise self._error(error) from None

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        try:
            self._context.__exit__(kind, error, traceback)
        except SQLAlchemyError as failure:
            raise self._error(failure) from None
        if isinstance(error, SQLAlchemyError):
            raise self._error(error) from None
        return False


def reason(error: SQLAlchemyError) -> str:
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"{type(error.orig).__name__}: {str(error.orig).strip().splitlines()[0]}"
    return str(error).splitlines()[0]


def create_store_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        options: dict[str, Any] = {}
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        else:  # one in-memory database, so every connection must be the same one
            options["poolclass"] = StaticPool
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **options
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ImportError, ModuleNotFoundError) as error:
        raise UsageError(
            f"No database driver for {parsed.drivername} ({error}). For PostgreSQL install "
            "pip install 'tapeagents[postgres]' and use a postgresql+psycopg:// URL."
        ) from None
