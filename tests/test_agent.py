"""Agents and LLMNode: prompts from tapes, parsing model output, the exact inverse, control flow."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from tapeagents import (
    Agent,
    AssistantMessage,
    Call,
    FinalAnswer,
    LLMNode,
    Node,
    ParsingFailure,
    Reasoning,
    Respond,
    SetNextNode,
    Tape,
    Thought,
    ToolCall,
    ToolEnvironment,
    ToolResult,
    UsageError,
    UserMessage,
    run_sync,
)
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call


def lookup(city: str) -> str:
    """Look up the weather in a city."""
    return f"sunny in {city}"


class Plan(Thought):
    """A numbered plan."""

    kind: Literal["test_agent_plan"] = "test_agent_plan"
    items: list[str]


env = ToolEnvironment([lookup])


def tools_node(**kwargs) -> LLMNode:
    return LLMNode(steps=[AssistantMessage, Plan, FinalAnswer], tools=env.tools, **kwargs)


def test_tool_calls_and_text_become_typed_steps() -> None:
    node = tools_node()
    output = LLMOutput(
        content="Let me check.",
        tool_calls=[
            tool_call("test_agent_plan", '{"items": ["look", "answer"]}', id="c1"),
            tool_call("lookup", '{"city": "Paris"}', id="c2"),
        ],
    )
    steps = node.parse(output)
    assert [type(s) for s in steps] == [Reasoning, Plan, ToolCall]
    assert steps[1].items == ["look", "answer"]  # type: ignore[attr-defined]
    assert steps[2].arguments == {"city": "Paris"} and steps[2].call_id == "c2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (LLMOutput(tool_calls=[tool_call("nope", "{}")]), "Unknown tool or step 'nope'"),
        (LLMOutput(tool_calls=[tool_call("lookup", "{city: Paris")]), "not JSON"),
        (
            LLMOutput(tool_calls=[tool_call("test_agent_plan", '{"items": 3}')]),
            "Invalid test_agent_plan",
        ),
        (LLMOutput(content=""), "empty"),
    ],
)
def test_bad_model_output_becomes_a_parsing_failure_with_the_raw_text(
    output: LLMOutput, message: str
) -> None:
    (step,) = tools_node().parse(output)
    assert isinstance(step, ParsingFailure)
    assert message in step.error
    assert step.raw_output == output.raw_text()


def test_text_beside_tool_calls_is_kept_as_reasoning_when_no_text_step() -> None:
    node = LLMNode(steps=[FinalAnswer], tools=env.tools)
    output = LLMOutput(
        content="I will look.", tool_calls=[tool_call("lookup", '{"city": "Nice"}', id="n1")]
    )
    steps = node.parse(output)
    assert [type(s) for s in steps] == [Reasoning, ToolCall]
    assert node.inverse(steps) == LLMOutput(
        content="I will look.", tool_calls=[tool_call("lookup", '{"city": "Nice"}', id="n1")]
    )
    (failure,) = node.parse(LLMOutput(content="just text"))
    assert isinstance(failure, ParsingFailure) and "expects tool calls" in failure.error


@pytest.mark.parametrize("mode", ["tools", "json"])
def test_inverse_is_exact(mode: Literal["tools", "json"]) -> None:
    node = tools_node(mode=mode)
    # text beside tool calls is a thought in tools mode; JSON answers say each step's kind
    text = Reasoning(text="Checking.") if mode == "tools" else AssistantMessage(content="Checking.")
    steps = [
        text,
        Plan(items=["a"]),
        ToolCall(name="lookup", arguments={"city": "Oslo"}),
    ]
    parsed = node.parse(node.inverse(steps))
    strip = lambda s: {"kind": s.kind, **s.llm_dict()}  # noqa: E731
    if mode == "json":  # call ids are not part of the JSON format
        assert [strip(s) | {"call_id": None} for s in parsed] == [
            strip(s) | {"call_id": None} for s in steps
        ]
    else:
        assert [strip(s) for s in parsed] == [strip(s) for s in steps]


def test_json_mode_reads_fenced_json_and_explains_the_format() -> None:
    node = tools_node(mode="json")
    text = 'Sure!\n```json\n[{"kind": "final_answer", "answer": "42"}]\n```'
    (step,) = node.parse(LLMOutput(content=text))
    assert isinstance(step, FinalAnswer) and step.answer == "42"
    assert '"kind": "final_answer"' in node.json_instructions()
    (bad,) = node.parse(LLMOutput(content='[{"kind": "final_answer"'))
    assert isinstance(bad, ParsingFailure) and "not valid JSON" in bad.error


def test_prompt_renders_the_tape_as_valid_tool_calling_messages() -> None:
    llm = ScriptedLLM(
        [
            LLMOutput(
                tool_calls=[
                    tool_call("test_agent_plan", '{"items": ["x"]}', id="p1"),
                    tool_call("lookup", '{"city": "Rome"}', id="l1"),
                ]
            ),
            "It is sunny in Rome.",
        ]
    )
    agent = Agent(
        "weather",
        nodes=[tools_node(system_prompt="Be brief. Task: {{ context.task }}")],
        llms=llm,
    )
    tape = Tape(context={"task": "weather"}, steps=[UserMessage(content="Rome?")])
    result = run_sync(agent, tape, env)
    assert result.tape.kinds() == [
        "user",
        "test_agent_plan",
        "tool_call",
        "tool_result",
        "assistant",
    ]
    messages = llm.prompts[1].messages
    assert messages[0] == {"role": "system", "content": "Be brief. Task: weather"}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert {m["tool_call_id"] for m in messages[3:]} == {"p1", "l1"}
    assert messages[4]["content"] == "sunny in Rome"
    assert {t["function"]["name"] for t in llm.prompts[0].tools} == {
        "lookup",
        "test_agent_plan",
        "final_answer",
    }
    # the steps point to the call that produced them
    assert result.tape[1].metadata.llm_call_id == result.tape[2].metadata.llm_call_id


def test_a_parsing_failure_is_shown_to_the_model_which_retries() -> None:
    llm = ScriptedLLM([LLMOutput(tool_calls=[tool_call("bogus", "{}")]), "Fine."])
    agent = Agent("a", nodes=[tools_node()], llms=llm)
    result = run_sync(agent, "hi", env)
    assert result.tape.kinds() == ["user", "parsing_failure", "assistant"]
    retry = llm.prompts[1].messages
    assert "bogus" in retry[-2]["content"] and "could not be used" in retry[-1]["content"]


class Emit(Node):
    def __init__(self, name: str, step_factory) -> None:
        super().__init__(name)
        self.step_factory = step_factory

    async def generate(self, agent, tape):
        yield self.step_factory(tape)


def test_nodes_run_in_order_unless_a_step_names_the_next() -> None:
    agent = Agent(
        "flow",
        nodes=[
            Emit("first", lambda t: SetNextNode(next_node="third")),
            Emit("second", lambda t: Reasoning(text="skipped")),
            Emit("third", lambda t: Reasoning(text="third")),
            Emit("fourth", lambda t: FinalAnswer(answer="done")),
        ],
    )
    result = run_sync(agent, "go")
    assert [s.metadata.node for s in result.tape.steps[1:]] == ["first", "third", "fourth"]
    assert result.reason == "stopped"


def test_subagents_answer_through_steps_on_the_same_tape() -> None:
    researcher = Agent(
        "researcher",
        nodes=[
            Emit("look", lambda t: Reasoning(text=f"asked: {t.steps[-1].content}")),
            Emit("answer", lambda t: Respond(content="found it")),
        ],
    )
    boss = Agent(
        "boss",
        nodes=[
            Emit("greet", lambda t: Reasoning(text="starting")),
            Emit(  # after the researcher responds, control comes back to this node
                "delegate",
                lambda t: (
                    FinalAnswer(answer=t.steps[-1].content)
                    if isinstance(t.steps[-1], Respond)
                    else Call(agent_name="researcher", content="find X")
                ),
            ),
        ],
        subagents=[researcher],
    )
    result = run_sync(boss, "Where is X?")
    assert [(s.kind, s.metadata.agent, s.metadata.node) for s in result.tape.steps[1:]] == [
        ("reasoning", "boss", "greet"),
        ("call", "boss", "delegate"),
        ("reasoning", "boss/researcher", "look"),
        ("respond", "boss/researcher", "answer"),
        ("final_answer", "boss", "delegate"),
    ]
    assert result.tape.steps[-1].answer == "found it"  # type: ignore[attr-defined]


def test_a_node_can_use_one_of_several_llms() -> None:
    cheap, strong = ScriptedLLM(["cheap"]), ScriptedLLM(["strong"])
    agent = Agent(
        "duo",
        nodes=[LLMNode("n", llm="strong")],
        llms={"default": cheap, "strong": strong},
    )
    result = run_sync(agent, "hi")
    assert result.tape.steps[-1].content == "strong"  # type: ignore[attr-defined]
    assert not cheap.prompts
    with pytest.raises(UsageError, match="no LLM named 'missing'.*default, strong"):
        agent.llm("missing")


def test_lookup_errors_name_the_valid_choices() -> None:
    agent = Agent("a", nodes=[LLMNode("x"), LLMNode("y")])
    with pytest.raises(UsageError, match="nodes are: x, y"):
        agent.node("z")
    with pytest.raises(UsageError, match="same name"):
        Agent("b", nodes=[LLMNode("x"), LLMNode("x")])


def test_templates_can_include_each_other_and_typos_raise() -> None:
    agent = Agent(
        "t",
        nodes=[LLMNode(system_prompt="{% include 'persona' %} Task: {{ context }}")],
        templates={"persona": "You are terse."},
        llms=ScriptedLLM(["ok"]),
    )
    prompt = agent.nodes[0].make_prompt(agent, Tape(context="sum", steps=[]))  # type: ignore[attr-defined]
    assert prompt.messages[0]["content"] == "You are terse. Task: sum"
    broken = LLMNode(system_prompt="{{ contxt }}")
    with pytest.raises(Exception, match="contxt"):
        broken.make_prompt(agent, Tape())


def test_tool_results_reach_the_model_even_for_errors() -> None:
    def fail(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk full")

    failing = ToolEnvironment([fail])
    llm = ScriptedLLM([LLMOutput(tool_calls=[tool_call("fail", '{"x": 1}')]), "Sorry."])
    agent = Agent("a", nodes=[LLMNode(tools=failing.tools)], llms=llm)
    result = run_sync(agent, "go", failing)
    result_step = result.tape.steps[2]
    assert isinstance(result_step, ToolResult) and result_step.error == "RuntimeError: disk full"
    assert json.dumps(llm.prompts[1].messages).count("disk full") == 1


class CommandNode(LLMNode):
    """Reads answers in its own text format, `CALL <tool> <city>`, instead of tool calls."""

    def parse(self, output: LLMOutput) -> list:
        text = output.content or ""
        if text.startswith("CALL "):
            _, name, city = text.split(" ", 2)
            return [ToolCall(name=name, arguments={"city": city})]
        return [AssistantMessage(content=text)]

    def inverse(self, steps) -> LLMOutput:
        (step,) = steps
        if isinstance(step, ToolCall):
            return LLMOutput(content=f"CALL {step.name} {step.arguments['city']}")
        return LLMOutput(content=step.content)


def test_a_custom_parse_and_inverse_work_in_tools_mode() -> None:
    llm = ScriptedLLM(["CALL lookup Oslo", "It is sunny."])
    node = CommandNode(steps=[AssistantMessage], tools=env.tools)
    result = run_sync(Agent("cmd", nodes=[node], llms=llm), "Weather?", env)
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    messages = node.make_prompt(Agent("cmd", nodes=[node], llms=llm), result.tape).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "CALL lookup Oslo"  # written in the node's own format
    assert messages[2]["content"] == "[tool_result] sunny in Oslo"


def test_steps_a_custom_node_yields_after_its_llm_call_are_linked_to_it() -> None:
    class Asks(Node):
        async def generate(self, agent, tape):
            call = await agent.llm().call(Prompt(messages=[{"role": "user", "content": "hi"}]))
            yield call
            yield Reasoning(text=call.output.content or "")
            yield SetNextNode(next_node="asks")  # routing: never linked

    result = run_sync(
        Agent("a", nodes=[Asks("asks")], llms=ScriptedLLM(["hello"])), "x", max_steps=2
    )
    reasoning, routing = result.tape.steps[1:3]
    assert reasoning.metadata.llm_call_id is not None and routing.metadata.llm_call_id is None


def test_a_hand_written_set_next_node_steers_the_agent_holding_the_tape() -> None:
    agent = Agent(
        "flow",
        nodes=[
            Emit("first", lambda t: Reasoning(text="first")),
            Emit("second", lambda t: Reasoning(text="second")),
            Emit("third", lambda t: Reasoning(text="third")),
        ],
    )
    tape = Tape(steps=[UserMessage(content="go"), SetNextNode(next_node="third")])
    assert agent.plan(tape)[1].name == "third"
