"""Batch fixtures: a store on SQLite and on PostgreSQL (see tests/store/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tapeagents.store import TapeStore
from tests.store.conftest import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tapes.db'}"
    else:
        yield from postgres_database()


@pytest.fixture
def store(store_url: str) -> Iterator[TapeStore]:
    with TapeStore(store_url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[TapeStore]:
    with TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}") as opened:
        yield opened


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from postgres_database()
