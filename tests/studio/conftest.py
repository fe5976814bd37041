"""Studio fixtures: a store with sample tapes and a test client over the real application."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tapeagents import Tape
from tapeagents.store import TapeStore
from tapeagents.studio import create_app
from tests.studio.data import browsing_tape, calc_tape, hostile_tape

AGENTS = {
    "calc": "tests.studio.agents:calculator",
    "slow": "tests.studio.agents:slow_calculator",
    "broken": "tests.studio.agents:broken",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TapeStore]:
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    yield store
    store.close()


@pytest.fixture
def tapes(store: TapeStore) -> dict[str, Tape]:
    """A calculator run, a browsing session with a screenshot, and a hostile tape."""
    return {
        "calc": calc_tape(store),
        "browse": browsing_tape(store),
        "hostile": hostile_tape(store),
    }


@pytest.fixture
def client(store: TapeStore) -> Iterator[TestClient]:
    with TestClient(create_app(store, agents=AGENTS), base_url="http://127.0.0.1") as client:
        yield client


def csrf_of(client: TestClient) -> str:
    """The CSRF token the studio puts in its pages."""
    page = client.get("/").text
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, "no CSRF token in the page"
    return found.group(1)
