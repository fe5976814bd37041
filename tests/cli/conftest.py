"""A temporary tape store filled by real runs, and a runner for the `tapeagents` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tapeagents import Tape, TapeMetadata, UserMessage, run_sync
from tapeagents.cli import app
from tapeagents.store import TapeStore
from tests.cli.agents import calc_agent, calc_env, chat_agent

Invoke = Callable[..., Result]


def fill(store: TapeStore) -> dict[str, str]:
    """Three chat tapes (two tagged "demo") and one calc tape; returns their ids by name."""
    ids = {}
    for name, text, tags in [
        ("hello", "hello there", ["demo"]),
        ("weather", "what is the weather", ["demo", "weather"]),
        ("bye", "goodbye", []),
    ]:
        tape = Tape(steps=[UserMessage(content=text)], metadata=TapeMetadata(tags=tags))
        ids[name] = run_sync(chat_agent(), tape, store=store).tape.id
    ids["calc"] = run_sync(calc_agent(), "2+3?", calc_env(), store=store).tape.id
    return ids


def make_invoke(url: str) -> Invoke:
    runner = CliRunner(env={"TAPEAGENTS_DB": None, "COLUMNS": "200"})

    def invoke(*args: str, db: str | None = url, input: str | None = None) -> Result:
        argv = [*args, "--db", db] if db is not None else list(args)
        return runner.invoke(app, argv, input=input)

    return invoke


def filled_store(path: Path) -> tuple[str, dict[str, str]]:
    """A SQLite store at `path` holding the sample tapes: (url, ids)."""
    url = f"sqlite:///{path}"
    with TapeStore(url) as store:
        return url, fill(store)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A store that tests only read: (url, ids)."""
    return filled_store(tmp_path_factory.mktemp("store") / "tapes.db")


@pytest.fixture
def fresh(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A filled store of this test's own, to change: (url, ids)."""
    return filled_store(tmp_path / "tapes.db")


@pytest.fixture
def cli(filled: tuple[str, dict[str, str]]) -> Invoke:
    return make_invoke(filled[0])


@pytest.fixture
def ids(filled: tuple[str, dict[str, str]]) -> dict[str, str]:
    return filled[1]
