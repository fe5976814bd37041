"""Recorded sessions of the example agents replay unchanged (`python -m tests.data.record`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.hello.agent import make_agent
from tapeagents.replay import assert_replays
from tapeagents.store import TapeStore
from tests.data.record import RECORDED


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[TapeStore]:
    """The committed store, copied: opening a store may upgrade its schema in place."""
    copy = tmp_path / RECORDED.name
    shutil.copyfile(RECORDED, copy)
    store = TapeStore(f"sqlite:///{copy}")
    yield store
    store.close()


def test_the_hello_agent_replays_its_recorded_sessions(recorded: TapeStore) -> None:
    tapes = list(recorded.iter_tapes())
    assert sorted(tape.id for tape in tapes) == ["hello-calculator", "hello-chat", "hello-test-llm"]
    agent, _ = make_agent("scripted")  # never asked: replay answers from the recorded calls
    assert_replays(agent, recorded)


def test_a_changed_prompt_shows_as_a_replay_diff(recorded: TapeStore) -> None:
    agent, _ = make_agent("scripted")
    agent.nodes[0].system_prompt = "You are a terse assistant."  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="asked the model something new") as failure:
        assert_replays(agent, recorded, ["hello-chat"])
    assert "+" in str(failure.value) and "terse" in str(failure.value)
