"""Bringing a database's schema to this version of tapeagents (Alembic migrations, run on open).

Each change to `schema.py` comes with a new migration in `migrations/versions/`; a released
migration is never edited.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from tapeagents.errors import StoreError
from tapeagents.store.engine import Database, reason
from tapeagents.store.schema import SCHEMA_VERSION

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["alembic_config", "schema_revision", "upgrade"]


def alembic_config(connection: Connection) -> Config:
    """An Alembic configuration whose migrations run on `connection`."""
    from alembic.config import Config  # imported when needed: alembic is slow to import

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.attributes["connection"] = connection
    return config


def schema_revision(database: Database) -> str | None:
    """The Alembic revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with database.read() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(database: Database) -> None:
    """Apply the migrations the database lacks (a no-op when it is current)."""
    current = schema_revision(database)
    if current == SCHEMA_VERSION:
        return
    from alembic import command

    try:
        with database.engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    except SQLAlchemyError as error:
        raise StoreError(
            f"Could not migrate the tape store at {database.display_url} from revision "
            f"{current} to {SCHEMA_VERSION}: {reason(error)}"
        ) from None
