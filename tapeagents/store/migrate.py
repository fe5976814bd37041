"""Bringing a database's schema to this version of tapeagents (Alembic migrations, run on open).

Each change to `schema.py` comes with a new migration in `migrations/versions/`; a released
migration is never edited.

An upgrade is atomic and safe when several processes open a new store at once: it runs in one
transaction that first takes the database's write lock (`BEGIN IMMEDIATE` on SQLite, whose DDL
is transactional; an advisory lock on PostgreSQL), then reads the revision again, so the first
process migrates and the others find the schema current. A process killed mid-upgrade leaves
the database as it was, and the next open does the whole upgrade.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, inspect, select, table, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tapeagents.errors import StoreError
from tapeagents.store.engine import Database
from tapeagents.store.schema import SCHEMA_VERSION, metadata

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_config",
    "check_revision",
    "foreign_tables",
    "known_revisions",
    "schema_revision",
    "upgrade",
]

_LOCK_KEY = 0x7461706573  # "tapes": the PostgreSQL advisory lock that serialises upgrades


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration whose migrations run on `connection`."""
    from alembic.config import Config  # imported when needed: alembic is slow to import

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def _revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def known_revisions() -> list[str]:
    """The schema revisions this tapeagents has migrations for, oldest first (their files are
    named `NNNN_what.py`, and the revision id is the number)."""
    versions = Path(__file__).parent / "migrations" / "versions"
    return sorted(path.name[:4] for path in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))


def check_revision(database: Database, revision: str | None) -> None:
    """Refuse a database whose schema revision this tapeagents does not know: one written by a
    newer tapeagents (it cannot read it correctly), or another application's Alembic revision.
    """
    if revision is None or revision in known_revisions():
        return
    if re.fullmatch(r"\d{4}", revision) and revision > SCHEMA_VERSION:
        raise StoreError(
            f"The tape store at {database.display_url} was written by a newer tapeagents "
            f"(schema revision {revision}; this one knows up to {SCHEMA_VERSION}): upgrade "
            "tapeagents (pip install -U tapeagents) to use it."
        )
    raise StoreError(
        f"The database at {database.display_url} is not a tape store: it is at the Alembic "
        f"revision {revision!r} of another application. Pass --db (or TapeStore(url)) with "
        "a database of its own for tapeagents."
    )


def foreign_tables(database: Database) -> list[str]:
    """The tables of a database without a schema revision that are not the store's: a
    database that holds some is another application's (or not made by tapeagents)."""
    with database.read() as connection:
        if _revision(connection) is not None:
            return []
        names = set(inspect(connection).get_table_names())
    return sorted(names - set(metadata.tables) - {"alembic_version"})


def schema_revision(database: Database) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    with database.read() as connection:
        return _revision(connection)


@contextmanager
def _locked(database: Database) -> Iterator[Connection]:
    """One transaction holding the database's write lock, committed if the block succeeds."""
    with database.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            # the driver would run each DDL statement in a transaction of its own
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def _drop_leftovers(connection: Connection) -> None:
    """Drop the empty tables an older tapeagents left when it was killed while creating the
    store (it ran each statement in a transaction of its own); refuse if any holds rows."""
    present = set(inspect(connection).get_table_names()) & set(metadata.tables)
    for name in present:
        if connection.execute(select(func.count()).select_from(table(name))).scalar():
            raise StoreError(
                f"The table {name} holds rows but the database has no schema revision: it was "
                "not made by tapeagents, or its alembic_version table was removed. Use another "
                "database, or restore this one from a backup."
            )
    for name in present:
        connection.execute(text(f'DROP TABLE "{name}"'))


def upgrade(database: Database) -> None:
    """Apply the migrations the database lacks (a no-op when it is current)."""
    current = schema_revision(database)
    if current == SCHEMA_VERSION:
        return
    check_revision(database, current)
    from alembic import command

    try:
        with _locked(database) as connection:
            current = _revision(connection)  # another process may have upgraded meanwhile
            if current == SCHEMA_VERSION:
                return
            check_revision(database, current)
            if current is None:
                _drop_leftovers(connection)
            command.upgrade(alembic_config(connection), "head")
    except SQLAlchemyError as error:
        raise StoreError(
            f"Could not migrate the tape store at {database.display_url} from revision "
            f"{current} to {SCHEMA_VERSION}: {database.reason(error)}"
        ) from None
