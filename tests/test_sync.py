"""Every blocking `*_sync` helper is a thin wrapper over its async twin, guarded the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tapeagents import Agent, LLMNode, Tape, ToolCall, ToolEnvironment, run_sync
from tapeagents.batch import run_batch_sync
from tapeagents.environment import react_sync
from tapeagents.errors import UsageError
from tapeagents.llms import ScriptedLLM
from tapeagents.replay import replay_sync
from tapeagents.sync import run_blocking


def echo(text: str) -> str:
    """Say the text back."""
    return text


def agent() -> Agent:
    return Agent("a", nodes=[LLMNode()], llms=ScriptedLLM(["x"]))


SYNC_HELPERS: dict[str, tuple[Callable[[], Any], str]] = {
    "run_sync": (lambda: run_sync(agent(), "hi"), "async for event in run(...)"),
    "replay_sync": (lambda: replay_sync(agent(), Tape(), llm_calls=[]), "await replay(...)"),
    "react_sync": (
        lambda: react_sync(ToolEnvironment([echo]), ToolCall(name="echo", arguments={}), Tape()),
        "await observe(...)",
    ),
    "run_batch_sync": (
        lambda: run_batch_sync(agent(), [{"id": 1}]),
        "async for result in run_batch(...)",
    ),
}


@pytest.mark.parametrize("name", sorted(SYNC_HELPERS))
async def test_a_sync_helper_inside_a_running_loop_names_the_async_call(name: str) -> None:
    call, instead = SYNC_HELPERS[name]
    message = f"{name}() cannot run inside a running event loop; use `{instead}` instead."
    with pytest.raises(UsageError) as info:
        call()  # the coroutine it built is closed, so no "never awaited" warning either
    assert str(info.value) == message


def test_outside_a_loop_run_blocking_returns_the_result() -> None:
    async def answer() -> int:
        return 42

    assert run_blocking(answer(), sync_name="answer_sync", use_instead="await answer()") == 42
