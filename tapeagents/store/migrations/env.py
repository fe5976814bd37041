"""Alembic environment: migrations run on the connection the tape store hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from tapeagents.errors import UsageError

connection = context.config.attributes.get("connection")
if connection is None:  # run from the alembic command line: use the configured URL
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise UsageError("Set sqlalchemy.url in alembic.ini (or let TapeStore run migrations).")
    engine = create_engine(url)
    with engine.begin() as connection:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
