"""Replay: recorded tapes as regression tests for changed agents."""

from __future__ import annotations

import pytest

from tapeagents import Agent, LLMNode, ToolEnvironment, run_sync
from tapeagents.llms import LLMOutput, ScriptedLLM, tool_call
from tapeagents.replay import assert_replays, replay_sync
from tapeagents.store import TapeStore


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def make_agent(system_prompt: str = "Use tools.", llm=None) -> Agent:
    env_tools = ToolEnvironment([multiply]).tools
    llm = llm or ScriptedLLM(
        [LLMOutput(tool_calls=[tool_call("multiply", '{"a": 6, "b": 7}', id="m1")]), "It is 42."]
    )
    return Agent("calc", nodes=[LLMNode(system_prompt=system_prompt, tools=env_tools)], llms=llm)


@pytest.fixture
def recorded() -> tuple[TapeStore, str]:
    store = TapeStore("sqlite:///:memory:")
    result = run_sync(make_agent(), "6*7?", ToolEnvironment([multiply]), store=store)
    return store, result.tape.id


def test_an_unchanged_agent_replays_without_calling_a_model(recorded) -> None:
    store, tape_id = recorded
    never = ScriptedLLM([])  # would raise if asked
    report = replay_sync(make_agent(llm=never), store.get(tape_id), store=store)
    assert report.passed, report.explain()
    assert report.steps_checked == 4
    assert "replay passed" in str(report)


def test_a_changed_prompt_is_reported_with_the_prompt_diff(recorded) -> None:
    store, tape_id = recorded
    report = replay_sync(make_agent("Use tools wisely."), store.get(tape_id), store=store)
    assert not report.passed and report.first_difference == 1
    assert report.expected is not None and report.expected.kind == "tool_call"
    assert '- "content": "Use tools.",' in report.reason
    assert '+ "content": "Use tools wisely.",' in report.reason


def test_changed_parsing_is_reported_with_both_versions(recorded) -> None:
    store, tape_id = recorded

    class Stricter(LLMNode):
        def parse(self, output):
            steps = super().parse(output)
            if output.content:
                from tapeagents import FinalAnswer

                return [FinalAnswer(answer=output.content)]
            return steps

    tools = ToolEnvironment([multiply]).tools
    agent = Agent(
        "calc", nodes=[Stricter(system_prompt="Use tools.", tools=tools)], llms=ScriptedLLM([])
    )
    report = replay_sync(agent, store.get(tape_id), store=store)
    assert (report.passed, report.first_difference) == (False, 3)
    assert report.expected.kind == "assistant" and report.actual.kind == "final_answer"  # type: ignore[union-attr]
    text = report.explain()
    assert "recorded: assistant It is 42." in text and "replayed: final_answer" in text


def test_a_live_environment_is_checked_against_the_recorded_observations(recorded) -> None:
    store, tape_id = recorded

    def broken_multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a + b

    broken_multiply.__name__ = "multiply"
    report = replay_sync(
        make_agent(), store.get(tape_id), store=store, env=ToolEnvironment([broken_multiply])
    )
    assert (report.passed, report.first_difference) == (False, 2)
    assert report.actual is not None and report.actual.content == "13"  # type: ignore[attr-defined]


def test_assert_replays_is_a_one_line_regression_test(recorded) -> None:
    store, _ = recorded
    assert_replays(make_agent(), store)
    with pytest.raises(AssertionError, match="1 of 1 tapes no longer replay"):
        assert_replays(make_agent("Be different."), store)
