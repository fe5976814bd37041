"""Store fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL comes from `scripts/with-postgres.sh` (which `make test` uses): it exports
TAPEAGENTS_TEST_POSTGRES_URL. Without it the PostgreSQL cases are skipped, unless
TAPEAGENTS_REQUIRE_POSTGRES=1 (set by `make test`), when they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapeagents.store import TapeStore

POSTGRES_URL = os.environ.get("TAPEAGENTS_TEST_POSTGRES_URL")


def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    if not POSTGRES_URL:
        if os.environ.get("TAPEAGENTS_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "TAPEAGENTS_TEST_POSTGRES_URL is not set; run through scripts/with-postgres.sh"
            )
        pytest.skip(
            "no PostgreSQL: run the tests through scripts/with-postgres.sh (make test does)"
        )
    import sqlalchemy as sa

    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tapes.db'}"
    else:
        yield from postgres_database()


@pytest.fixture
def store(store_url: str) -> Iterator[TapeStore]:
    store = TapeStore(store_url)
    yield store
    store.close()
