"""The store's connection to its database: engines, transactions, and database failures turned
into `StoreError`s that name the store.

`Database` is the one object every part of the store (and the group committer) is handed: the
engine, the statements prebuilt for its dialect, and read and write transactions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from tapeagents.errors import StoreError, UsageError
from tapeagents.secrets import redact_url, scrub, url_secrets
from tapeagents.store.rows import Statements

__all__ = ["Database", "Transaction", "create_store_engine", "parse_store_url"]


class Database:
    """One store's database: its engine, prebuilt statements and transactions.

    Args:
        url: A SQLAlchemy URL (`sqlite:///tapes.db`, `postgresql+psycopg://user@host/db`).

    It can be shared by threads, like the engine it wraps.
    """

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        self.display_url = redact_url(self.engine.url.render_as_string(hide_password=True))
        """The URL with its password (and secret query parameters such as `?password=`) hidden,
        for messages."""
        self.statements = Statements(self.engine.dialect.name)
        self.writes_inline = self.engine.dialect.name == "sqlite"
        """SQLite writes take well under a millisecond: callers in an event loop may make them
        directly rather than through a worker thread."""

    def check_reachable(self) -> None:
        """Connect once, so that a wrong URL or a stopped server fails here, clearly."""
        try:
            with self.engine.connect():
                pass
        except SQLAlchemyError as error:
            advice = (
                "Check that the file is a tape store (a SQLite database) and the path is right."
                if self.engine.dialect.name == "sqlite"
                else "Check that the database server is running and the URL is right."
            )
            raise StoreError(
                f"Cannot open the tape store at {self.display_url}: {self.reason(error)}. {advice}"
            ) from None

    def reason(self, error: SQLAlchemyError | UnicodeEncodeError) -> str:
        """What the database said (`reason`), without this store's credentials in it: a driver
        may repeat the connection string or a password in its message."""
        url = self.engine.url
        shown = url.render_as_string(hide_password=False)
        secrets = [url.password if isinstance(url.password, str) else None, *url_secrets(shown)]
        secrets = [s for s in secrets if s and s != url.username]
        return scrub(_first_line(error), secrets=secrets)

    def read(self) -> Transaction:
        """A connection for reading."""
        return Transaction(self, write=False)

    def write(self) -> Transaction:
        """A connection in a transaction, committed when the block ends without an error."""
        return Transaction(self, write=True)

    def missing(self, tape_id: str) -> StoreError:
        """The error for a tape id the store does not have."""
        return StoreError(
            f"No tape {tape_id!r} in {self.display_url}. `tapeagents ls` lists the stored tapes."
        )


class Transaction:
    """A connection (in a transaction when writing) whose database failures become
    `StoreError`s that name the store."""

    def __init__(self, database: Database, *, write: bool) -> None:
        self.database = database
        self.verb = "write to" if write else "read from"
        self.write = write
        self._context: AbstractContextManager[Connection] | None = None

    def _error(self, error: SQLAlchemyError | UnicodeEncodeError) -> StoreError:
        return StoreError(
            f"Cannot {self.verb} the tape store at {self.database.display_url}: "
            f"{self.database.reason(error)}"
        )

    def __enter__(self) -> Connection:
        engine = self.database.engine
        try:
            self._context = engine.begin() if self.write else engine.connect()
            return self._context.__enter__()
        except SQLAlchemyError as error:
            raise self._error(error) from None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._context is not None, "a transaction is left only after it was entered"
        try:
            self._context.__exit__(kind, error, traceback)
        except SQLAlchemyError as failure:
            raise self._error(failure) from None
        # a lone surrogate ("\ud800") cannot be encoded for the database: the driver raises
        # this before the database sees the text, and it is the database's refusal all the same
        if isinstance(error, SQLAlchemyError | UnicodeEncodeError):
            raise self._error(error) from None


def _first_line(error: SQLAlchemyError | UnicodeEncodeError) -> str:
    """The first line of what the database said, with the driver's error class (unscrubbed:
    messages go through `Database.reason`)."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        return f"{type(error.orig).__name__}: {str(error.orig).strip().splitlines()[0]}"
    if isinstance(error, UnicodeEncodeError):
        return f"UnicodeEncodeError: {error}"
    return str(error).splitlines()[0]


def parse_store_url(url: str) -> URL:
    """The parsed URL, or a `UsageError` that shows it without its password (SQLAlchemy's own
    errors and a bad port's `ValueError` would print or keep it)."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as error:
        detail = scrub(str(error), secrets=url_secrets(url))
        raise UsageError(
            f"{redact_url(url)!r} is not a database URL ({detail}). Use sqlite:///path.db or "
            "postgresql+psycopg://user:password@host:port/database, with special characters "
            "of the password percent-encoded (@ as %40, space as %20)."
        ) from None


def create_store_engine(url: str) -> Engine:
    """An engine for the store: SQLite in WAL mode, or PostgreSQL with a pinged pool."""
    parsed = parse_store_url(url)
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
