"""The run loop: events, stop reasons, error handling, resuming."""

from __future__ import annotations

import asyncio

import pytest

from tapeagents import (
    Action,
    Agent,
    AssistantMessage,
    Environment,
    EnvironmentReacted,
    ErrorObservation,
    FinalAnswer,
    Finished,
    LLMCallMade,
    LLMNode,
    Node,
    NodeFailure,
    Observation,
    Reasoning,
    StepAppended,
    Tape,
    TextStreamed,
    ToolCall,
    ToolEnvironment,
    UsageError,
    UserMessage,
    run,
    run_sync,
)
from tapeagents.errors import ContextWindowExceeded
from tapeagents.llms import LLM, LLMOutput, Prompt, ScriptedLLM, TextDelta, tool_call


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


calc = ToolEnvironment([add])


def calc_agent(*answers) -> Agent:
    return Agent(
        "calc",
        nodes=[LLMNode(steps=[AssistantMessage, FinalAnswer], tools=calc.tools)],
        llms=ScriptedLLM(list(answers)),
    )


async def test_run_yields_typed_events_in_order() -> None:
    agent = calc_agent(
        LLMOutput(tool_calls=[tool_call("add", '{"a": 2, "b": 3}')]),
        LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')]),
    )
    events = [event async for event in run(agent, "2+3?", calc)]
    assert [type(e).__name__ for e in events] == [
        "LLMCallMade",
        "StepAppended",
        "StepAppended",
        "EnvironmentReacted",
        "LLMCallMade",
        "StepAppended",
        "Finished",
    ]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "stopped"
    assert finished.tape.kinds() == ["user", "tool_call", "tool_result", "final_answer"]
    appended = [e for e in events if isinstance(e, StepAppended)]
    assert [e.index for e in appended] == [1, 2, 3]
    reacted = next(e for e in events if isinstance(e, EnvironmentReacted))
    assert reacted.observations[0].content == "5"  # type: ignore[attr-defined]
    assert reacted.observations[0].action_id == finished.tape[1].metadata.id
    calls = [e.call for e in events if isinstance(e, LLMCallMade)]
    assert finished.tape[3].metadata.llm_call_id == calls[1].id


def test_stops_when_actions_are_pending_and_no_environment_is_given() -> None:
    agent = calc_agent(LLMOutput(tool_calls=[tool_call("add", '{"a": 1, "b": 1}')]), "It is 2.")
    result = run_sync(agent, "1+1?")
    assert result.reason == "no_environment"
    assert result.tape.kinds() == ["user", "tool_call"]
    # resuming with an environment answers the pending action first
    resumed = run_sync(agent, result.tape, calc)
    assert resumed.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    assert resumed.reason == "awaiting_input"


def test_a_conversation_resumes_after_the_user_replies() -> None:
    agent = Agent(
        "chat", nodes=[LLMNode()], llms=ScriptedLLM(["Hi! Name?", "Nice to meet you, Ann."])
    )
    first = run_sync(agent, "Hello")
    assert first.reason == "awaiting_input"
    first.tape.append(UserMessage(content="Ann"))
    second = run_sync(agent, first.tape)
    assert second.tape.kinds() == ["user", "assistant", "user", "assistant"]


def test_resume_from_a_prefix_or_an_edited_copy() -> None:
    agent = Agent(
        "chat", nodes=[LLMNode()], llms=ScriptedLLM(lambda p: p.messages[-1]["content"].upper())
    )
    tape = run_sync(agent, "one").tape
    tape.append(UserMessage(content="two"))
    run_sync(agent, tape)
    fork = tape.fork(at=1)
    assert run_sync(agent, fork).tape[-1].content == "ONE"  # type: ignore[attr-defined]
    edited = tape.fork(at=2)
    edited.steps[1] = AssistantMessage(content="edited")
    edited.append(UserMessage(content="three"))
    result = run_sync(agent, edited)
    assert [s.content for s in result.tape] == ["one", "edited", "three", "THREE"]  # type: ignore[attr-defined]


def test_max_steps_limits_the_run() -> None:
    class Think(Node):
        async def generate(self, agent, tape):
            yield Reasoning(text="hmm")

    result = run_sync(Agent("loop", nodes=[Think("t")]), "go", max_steps=5)
    assert result.reason == "max_steps" and len(result.tape) == 6


def test_repeated_unparsable_output_stops_with_an_error() -> None:
    agent = Agent(
        "bad", nodes=[LLMNode(steps=[FinalAnswer])], llms=ScriptedLLM(lambda p: "not a tool call")
    )
    result = run_sync(agent, "go", max_errors=2)
    assert result.reason == "error"
    assert result.tape.kinds() == ["user", "parsing_failure", "parsing_failure"]
    assert "2 times in a row" in (result.error or "")


class Overflowing(LLM):
    async def generate(self, prompt: Prompt) -> LLMOutput:
        raise ContextWindowExceeded("prompt of 9000 tokens exceeds the 8192-token window")


def test_an_llm_failure_is_a_step_and_ends_the_run() -> None:
    agent = Agent("a", nodes=[LLMNode()], llms=Overflowing("tiny"))
    result = run_sync(agent, "long text")
    assert result.reason == "error"
    assert result.tape.kinds() == ["user", "llm_failure"]
    assert "8192" in result.tape[-1].error  # type: ignore[attr-defined]
    assert "ContextWindowExceeded" in (result.error or "")


def test_a_node_that_raises_is_recorded_then_reraised() -> None:
    class Broken(Node):
        async def generate(self, agent, tape):
            yield Reasoning(text="before")
            raise KeyError("oops")

    tape = Tape(steps=[UserMessage(content="go")])
    with pytest.raises(KeyError, match="oops"):
        run_sync(Agent("b", nodes=[Broken("n")]), tape)
    assert tape.kinds() == ["user", "reasoning", "node_failure"]
    failure = tape[-1]
    assert isinstance(failure, NodeFailure) and "oops" in failure.error
    assert failure.metadata.node == "n"


def test_a_node_that_yields_nothing_is_a_usage_error() -> None:
    class Silent(Node):
        async def generate(self, agent, tape):
            return
            yield

    with pytest.raises(UsageError, match="produced no steps"):
        run_sync(Agent("s", nodes=[Silent("quiet")]), "go")


class Shaky(Environment):
    async def react(self, action: Action, tape: Tape) -> Observation:
        if isinstance(action, ToolCall) and action.name == "crash":
            raise ConnectionError("browser died")
        return await super().react(action, tape)


class Do(Action):
    kind: str = "test_do"


def test_every_action_gets_exactly_one_observation_even_when_the_environment_fails() -> None:
    class Acts(Node):
        async def generate(self, agent, tape):
            if len(tape) > 1:
                yield FinalAnswer(answer="done")
                return
            yield ToolCall(name="crash")
            yield Do()

    result = run_sync(Agent("a", nodes=[Acts("n")]), "go", Shaky())
    assert result.tape.kinds() == [
        "user",
        "tool_call",
        "test_do",
        "error_observation",
        "error_observation",
        "final_answer",
    ]
    crash, unknown = result.tape[3], result.tape[4]
    assert isinstance(crash, ErrorObservation) and "browser died" in crash.error
    assert isinstance(unknown, ErrorObservation) and "test_do" in unknown.error
    assert crash.action_id == result.tape[1].metadata.id
    assert unknown.action_id == result.tape[2].metadata.id


def test_streaming_text_arrives_as_events() -> None:
    class Streamer(LLM):
        async def generate(self, prompt: Prompt) -> LLMOutput:
            return LLMOutput(content="Hello there")

        async def stream(self, prompt: Prompt):
            yield TextDelta(text="Hello")
            yield TextDelta(text=" there")
            yield LLMOutput(content="Hello there")

    agent = Agent("s", nodes=[LLMNode()], llms=Streamer("s"))

    async def collect():
        return [e async for e in run(agent, "hi")]

    events = asyncio.run(collect())
    assert [e.text for e in events if isinstance(e, TextStreamed)] == ["Hello", " there"]


async def test_the_steps_of_one_answer_are_stored_together_then_reported(tmp_path) -> None:
    """One model answer (a thought and a tool call) is one write: its text streams live, and
    its steps are reported only once the store holds all of them (a crash between them is
    impossible: see tests/store/test_write_failures.py)."""
    from tapeagents.store import TapeStore

    class Streamer(LLM):
        answers = [
            LLMOutput(content="Adding.", tool_calls=[tool_call("add", '{"a": 2, "b": 3}')]),
            LLMOutput(tool_calls=[tool_call("final_answer", '{"answer": "5"}')]),
        ]

        async def generate(self, prompt: Prompt) -> LLMOutput:
            return self.answers.pop(0)

        async def stream(self, prompt: Prompt):
            output = self.answers.pop(0)
            if output.content:
                yield TextDelta(text=output.content)
            yield output

    node = LLMNode(steps=[FinalAnswer], tools=calc.tools, text_step=Reasoning)
    agent = Agent("calc", nodes=[node], llms=Streamer("s"))
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    tape = Tape(steps=[UserMessage(content="2+3?")])
    seen: list[tuple[str, int]] = []  # (event, steps stored when it came)
    async for event in run(agent, tape, calc, store=store):
        if isinstance(event, Finished):
            assert event.reason == "stopped"
        else:
            stored = len(store.get(tape.id)) if isinstance(event, StepAppended) else -1
            seen.append((type(event).__name__, stored))
    assert seen[:4] == [
        ("TextStreamed", -1),
        ("LLMCallMade", -1),
        ("StepAppended", 3),  # the thought is reported once its tool call is stored too
        ("StepAppended", 3),
    ]
    assert store.get(tape.id).kinds() == [
        "user",
        "reasoning",
        "tool_call",
        "tool_result",
        "final_answer",
    ]
    store.close()


async def test_run_sync_inside_a_running_loop_says_to_await_run() -> None:
    agent = Agent("a", nodes=[LLMNode()], llms=ScriptedLLM(["x"]))
    with pytest.raises(UsageError, match="async for event in run"):
        run_sync(agent, "hi")
