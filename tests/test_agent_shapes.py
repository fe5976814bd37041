"""Recorded sessions of every agent shape (ReAct, plan-act, subagents, routing) replay unchanged,
record again byte-identically, send only valid chat requests, and answer every model request
from the recording with `ReplayLLM` and `CachedLLM` (`python -m tests.data.record_shapes`)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tapeagents import Agent, Tape, ToolCall, ToolResult
from tapeagents.agent import NodeOutput
from tapeagents.chat_rules import validate_chat
from tapeagents.llms import CachedLLM
from tapeagents.replay import assert_replays, replay_sync
from tapeagents.store import TapeStore
from tests.agent_shapes import (
    Route,
    Unreachable,
    cache_hits,
    plan_act,
    react,
    replay_hits,
    routing,
    run_session,
    session,
    subagents,
    weather,
)
from tests.data.record_shapes import RECORDED_SHAPES, SESSIONS, SMALL_WINDOW, record


@pytest.fixture
def recorded(tmp_path: Path) -> Iterator[TapeStore]:
    """The committed store, copied: opening a store may upgrade its schema in place."""
    copy = tmp_path / RECORDED_SHAPES.name
    shutil.copyfile(RECORDED_SHAPES, copy)
    store = TapeStore(f"sqlite:///{copy}")
    yield store
    store.close()


def test_every_shape_reaches_its_answer_through_the_right_agents() -> None:
    agent, env = subagents()
    tape = run_session(agent, env, session("subagents", 4))
    assert tape.kinds() == 2 * [
        "user",
        "reasoning",
        "call",
        "tool_call",
        "tool_result",
        "respond",
        "final_answer",
    ]
    # the subagent did the research; control came back to the node that called it
    assert [s.metadata.agent for s in tape.steps[3:7]] == [
        "assistant/researcher",
        "",
        "assistant/researcher",
        "assistant",
    ]
    assert tape.steps[6].metadata.node == "delegate"
    answers = [s.answer for s in tape.steps if s.kind == "final_answer"]
    assert answers == [
        f"The researcher says: It is {weather(city)}." for city in ("Tokyo", "Cairo")
    ]

    agent, env = plan_act()
    tape = run_session(agent, env, session("plan_act", 0))
    plans = [s.items for s in tape.steps if s.kind == "shapes_plan"]
    assert plans == [
        ["look up Oslo", "look up Rome", "answer"],
        ["look up Rome", "answer"],
        ["answer"],
    ]
    assert tape.steps[-1].answer == "foggy in Oslo; warm in Rome"

    agent, env = react()
    tape = run_session(agent, env, session("react", 0))
    assert tape.kinds() == ["user", "tool_call", "tool_result", "final_answer"]

    agent, env = routing()
    math = run_session(agent, env, session("routing", 1))
    assert math.kinds() == ["user", "tool_call", "set_next_node", "tool_result", "final_answer"]
    assert (math.steps[3].content, math.steps[-1].metadata.node) == ("8", "math")


def test_the_recorded_sessions_of_every_shape_replay(recorded: TapeStore) -> None:
    assert sorted(tape.id for tape in recorded.iter_tapes()) == sorted(SESSIONS)
    for tape_id, (factory, _) in SESSIONS.items():
        agent, _ = factory()
        assert_replays(agent, recorded, [tape_id])


def test_recording_again_gives_byte_identical_requests(recorded: TapeStore, tmp_path: Path) -> None:
    """The committed store was recorded in another process: the same sessions, recorded now,
    make exactly the same requests (an LLM call's id is the hash of its request) and get the
    same answers. Random ids or unordered sets in a prompt would fail here."""
    fresh_path = tmp_path / "fresh.db"
    record(fresh_path)
    fresh = TapeStore(f"sqlite:///{fresh_path}")
    try:
        for tape_id in SESSIONS:
            old, new = recorded.get(tape_id), fresh.get(tape_id)
            assert new.kinds() == old.kinds(), tape_id
            old_calls, new_calls = recorded.llm_calls_of(old), fresh.llm_calls_of(new)
            assert [c.id for c in new_calls] == [c.id for c in old_calls], tape_id
            assert [c.output for c in new_calls] == [c.output for c in old_calls], tape_id
    finally:
        fresh.close()


def test_every_recorded_request_is_a_valid_chat(recorded: TapeStore) -> None:
    count = 0
    for tape in recorded.iter_tapes():
        for call in recorded.llm_calls_of(tape):
            validate_chat(call.prompt.messages, call.prompt.tools)
            count += 1
    assert count >= 40


def test_replay_cuts_long_prompts_with_the_recorded_models_window(recorded: TapeStore) -> None:
    """The replaying `ReplayLLM` is `like` the agent's LLM: the same context window, so the
    default policy drops the same old turns as when recording."""
    tape = recorded.get("plan_act-window-3")
    calls = recorded.llm_calls_of(tape)
    assert "earlier turns omitted" in str(calls[-1].prompt.messages)
    agent, _ = plan_act(actor_window=SMALL_WINDOW)
    report = replay_sync(agent, tape, store=recorded)
    assert report.passed, report.explain()
    assert report.llm_calls == len(calls) == 6
    # an actor with a larger window asks for the whole conversation, which was never sent
    agent, _ = plan_act(actor_window=None)
    report = replay_sync(agent, tape, store=recorded)
    assert not report.passed and "asked the model something new" in report.reason
    assert (report.first_difference, report.llm_calls) == (len(tape.steps) - 1, 5)


class Miscounting(Route):
    """The routing node, with a bug: it adds the wrong numbers."""

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[NodeOutput]:
        async for item in super().generate(agent, tape):
            if isinstance(item, ToolCall):
                item = item.model_copy(update={"arguments": {**item.arguments, "b": 0}})
            yield item


def test_a_code_tool_call_replays_whatever_its_random_id(recorded: TapeStore) -> None:
    """A tool call written by code gets a new random `call_id` on every run; no model sees it,
    so replay ignores it, and still reports a change of name or arguments."""
    tape = recorded.get("routing-1")
    agent, env = routing()
    again = run_session(agent, env, session("routing", 1))
    assert isinstance(again.steps[1], ToolCall) and isinstance(tape.steps[1], ToolCall)
    assert again.steps[1].call_id != tape.steps[1].call_id
    assert isinstance(tape.steps[3], ToolResult)
    assert replay_sync(agent, tape, store=recorded).passed

    agent.nodes[0] = Miscounting("route")
    report = replay_sync(agent, tape, store=recorded)
    assert (report.passed, report.first_difference) == (False, 1)


def test_ten_multi_agent_sessions_hit_on_every_call(tmp_path: Path) -> None:
    """The measurement of `benchmarks/replay_hits.py`, smaller: sessions recorded live (through a
    fresh cache), then replayed with `ReplayLLM`, and run again with `CachedLLM` over that cache
    and over the store: every request hits, and no model is asked."""
    store = TapeStore(f"sqlite:///{tmp_path / 'sessions.db'}")
    try:
        cache: dict[str, Any] = {}
        sessions = range(10)
        first = cache_hits("subagents", cache, sessions, live=True, store=store)
        assert (first.hits, first.misses) == (0, 80)  # every request new: 8 per session
        ids = [f"subagents-{i}" for i in sessions]
        assert store.count() == 10
        replayed = replay_hits("subagents", store, ids)
        assert (replayed.hits, replayed.misses) == (80, 0)
        for source in (cache, store.llm_cache()):
            again = cache_hits("subagents", source, sessions, live=False)
            assert (again.hits, again.misses) == (80, 0)
    finally:
        store.close()


def test_a_changed_prompt_misses(tmp_path: Path) -> None:
    """The counts are not vacuous: a changed prompt misses in the replay and in the cache."""
    store = TapeStore(f"sqlite:///{tmp_path / 'sessions.db'}")
    try:
        cache: dict[str, Any] = {}
        cache_hits("subagents", cache, [0], live=True, store=store)
        agent, env = subagents()
        agent.nodes[0].system_prompt = "Be brief."  # type: ignore[attr-defined]
        report = replay_sync(agent, store.get("subagents-0"), store=store)
        assert (report.passed, report.llm_calls) == (False, 0)
        assert "asked the model something new" in report.reason

        wrapped = CachedLLM(Unreachable(agent.llm()), cache)
        agent.llms["default"] = wrapped
        with pytest.raises(AssertionError, match="ended with error"):
            run_session(agent, env, session("subagents", 0))
        assert (wrapped.hits, wrapped.misses) == (0, 1)
    finally:
        store.close()
