"""Training examples rebuilt from tapes: exact for the agent that made them, re-rendered for
another, and every output that cannot be reproduced reported with its step and reason."""

from __future__ import annotations

import pytest

from tapeagents import (
    AssistantMessage,
    FinalAnswer,
    LLMNode,
    ParsingFailure,
    StepMetadata,
    Tape,
    ToolCall,
    UserMessage,
    run_sync,
)
from tapeagents.chat_rules import validate_chat
from tapeagents.conversation import output_groups
from tapeagents.export import (
    ExportError,
    ExportReport,
    check_exact,
    tape_examples,
    training_examples,
)
from tapeagents.export.prefixes import prefix_prompts
from tapeagents.llms import Prompt, ScriptedLLM
from tapeagents.store import TapeStore
from tests.export.agents import (
    boss_agent,
    calc_agent,
    calc_env,
    json_agent,
    planner_agent,
    question,
    solve,
)


@pytest.fixture
def store(tmp_path) -> TapeStore:
    with TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}") as store:
        yield store


def test_examples_equal_the_recorded_calls_for_the_agent_that_made_the_tape(
    store: TapeStore,
) -> None:
    for agent in (calc_agent(), json_agent(), planner_agent()):
        tape = solve(store, agent, 2, 3)
        stored = store.get(tape.id)
        report = check_exact(stored, agent, store)
        assert report.exact, report.explain()
        calls = store.llm_calls_of(stored)
        assert report.checked == len({c.id for c in calls}) > 0
        examples = tape_examples(stored, agent)
        for example, call in zip(examples, dict.fromkeys(c.id for c in calls), strict=True):
            recorded = next(c for c in calls if c.id == call)
            assert example.prompt.messages == recorded.prompt.messages
            assert example.prompt.tools == recorded.prompt.tools
            assert example.output.as_message() == recorded.output.as_message()


def test_subagent_outputs_are_rebuilt_with_the_subagents_nodes(store: TapeStore) -> None:
    agent = boss_agent()
    tape = run_sync(agent, "Add 2 and 3.", store=store).tape
    assert tape.kinds() == ["user", "call", "respond", "assistant"]
    examples = tape_examples(tape, agent)
    assert [e.agent for e in examples] == ["boss", "boss/helper", "boss"]
    assert examples[1].prompt.messages[0]["content"] == "You help."
    # each example is its agent's view: the helper sees its task, not the user's conversation;
    # the boss sees its call answered by the helper's response, not the helper's work
    call = tape.steps[1]
    assert [(m["role"], m["content"]) for m in examples[1].prompt.messages[1:]] == [
        ("user", call.content)  # type: ignore[attr-defined]
    ]
    boss_view = examples[2].prompt.messages
    assert [m["role"] for m in boss_view] == ["system", "user", "assistant", "tool"]
    assert boss_view[3]["content"] == tape.steps[2].content  # type: ignore[attr-defined]
    for example in examples:
        validate_chat(example.prompt.messages, example.prompt.tools)
    report = check_exact(tape, agent, store)
    assert report.exact and report.checked == 3, report.explain()


def test_prefix_prompts_equals_make_prompt_on_every_prefix() -> None:
    context_only = calc_agent(system_prompt="Add the numbers in {{ context }}.")
    included = calc_agent(system_prompt="{% include 'count' %}")
    included.templates = type(included.templates)({"count": "{{ tape.steps | length }} steps"})
    for agent in (planner_agent(), context_only, included):
        start = Tape(context="2+3", steps=[UserMessage(content="2+3?")])
        tape = run_sync(agent, start, calc_env()).tape
        assert len(tape) >= 3
        for node in agent.nodes:
            assert isinstance(node, LLMNode)
            ends = list(range(len(tape.steps) + 1))
            fast = prefix_prompts(node, agent, tape, ends)
            slow = [node.make_prompt(agent, tape.fork(end)) for end in ends]
            assert fast == slow
    (prompt,) = prefix_prompts(included.nodes[0], included, tape, [3])  # type: ignore[arg-type]
    assert prompt.messages[0]["content"] == "3 steps"


def test_a_node_with_its_own_make_prompt_is_exported_with_it() -> None:
    class Terse(LLMNode):
        def make_prompt(self, agent, tape):  # type: ignore[no-untyped-def]
            return Prompt(messages=[{"role": "user", "content": f"{len(tape.steps)} steps"}])

    agent = calc_agent()
    tape = run_sync(agent, question(2, 3), calc_env()).tape
    terse = Terse("terse")
    prompts = prefix_prompts(terse, agent, tape, [1, 3])
    assert [p.messages[0]["content"] for p in prompts] == ["1 steps", "3 steps"]


def test_output_groups_follow_the_llm_calls() -> None:
    tape = run_sync(calc_agent(), question(2, 3), calc_env()).tape
    assert tape.kinds() == ["user", "reasoning", "tool_call", "tool_result", "final_answer"]
    assert output_groups(tape.steps) == [(0, 1), (1, 3), (3, 4), (4, 5)]


def test_a_teachers_tape_is_rerendered_with_a_students_prompts() -> None:
    teacher = calc_agent("teacher", system_prompt="You are a careful calculator.")
    student = calc_agent("student", system_prompt="Add.")
    tape = solve(None, teacher, 4, 5)
    examples = tape_examples(tape, student)
    assert len(examples) == 2
    assert all(e.agent == "student" for e in examples)
    assert all(e.prompt.messages[0] == {"role": "system", "content": "Add."} for e in examples)
    # The answers are the teacher's steps, written as the student's node writes them.
    first = examples[0].output
    assert first.content == "I add 4 and 5."
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("add", '{"a": 4, "b": 5}')]
    assert examples[1].output.tool_calls[0].name == "final_answer"


def test_steps_the_target_cannot_reproduce_are_problems_with_step_and_reason() -> None:
    tape = solve(None, calc_agent("teacher"), 1, 2)
    no_tools = calc_agent("student")
    no_tools.nodes[0] = LLMNode(steps=[FinalAnswer])  # same name, no `add` tool
    report = ExportReport()
    assert tape_examples(tape, no_tools, report=report) == []
    (problem,) = report.problems
    assert (problem.tape_id, problem.step_index) == (tape.id, 1)
    assert "has no tool 'add'" in problem.reason
    assert report.skipped["outputs of tapes with problems"] == 1  # the final answer

    report = ExportReport()
    kept = tape_examples(tape, no_tools, report=report, on_problem="skip_output")
    assert [e.start for e in kept] == [4] and len(report.problems) == 1

    with pytest.raises(ExportError, match=r"step 1: node 'main' has no tool 'add'"):
        tape_examples(tape, no_tools, on_problem="raise")


def test_unknown_node_and_unemittable_kind_are_named() -> None:
    tape = solve(None, calc_agent(), 1, 2)
    renamed = calc_agent()
    renamed.nodes[0].name = "solve"
    renamed._node_index = {"solve": 0}
    report = ExportReport()
    tape_examples(tape, renamed, report=report, on_problem="skip_output")
    assert {p.step_index for p in report.problems} == {1, 4}
    assert "has no node 'main'" in report.problems[0].reason

    text_only = calc_agent()
    text_only.nodes[0] = LLMNode(steps=[AssistantMessage], tools=calc_env().tools)
    report = ExportReport()
    tape_examples(tape, text_only, report=report, on_problem="skip_output")
    reasons = {p.step_index: p.reason for p in report.problems}
    assert list(reasons) == [4]  # text beside tool calls is its thought_step (Reasoning)
    assert "cannot emit step kind 'final_answer'" in reasons[4]


def test_an_answer_that_does_not_parse_back_is_a_problem() -> None:
    tape = question(1, 1)
    answer = AssistantMessage(
        content="  padded  ", metadata=StepMetadata(agent="arith", node="main", llm_call_id="x")
    )
    tape.append(answer)
    target = json_agent()
    target.nodes[0] = LLMNode(steps=[AssistantMessage])  # tools mode: text is stripped on parse
    report = ExportReport()
    tape_examples(tape, target, report=report)
    assert "would not parse its own answer back" in report.problems[0].reason


def test_a_failing_prompt_template_is_a_problem() -> None:
    tape = solve(None, calc_agent(), 1, 2)
    broken = calc_agent(system_prompt="{{ context.missing }}")
    report = ExportReport()
    assert tape_examples(tape, broken, report=report) == []
    assert [p.step_index for p in report.problems] == [1, 4]
    assert "cannot build its prompt" in report.problems[0].reason


def test_failed_parses_and_other_agents_are_counted_not_exported() -> None:
    tape = question(1, 2)
    failure = ParsingFailure(
        error="not JSON",
        raw_output="hmm",
        metadata=StepMetadata(agent="arith", node="main", llm_call_id="c1"),
    )
    other = AssistantMessage(content="hi", metadata=StepMetadata(agent="user_sim", node="main"))
    good = FinalAnswer(
        answer="3", metadata=StepMetadata(agent="arith", node="main", llm_call_id="c2")
    )
    tape.extend([failure, other, good])
    report = ExportReport()
    examples = tape_examples(tape, json_agent(), report=report)
    assert [e.start for e in examples] == [3]
    assert report.skipped == {
        "model output that could not be parsed": 1,
        "steps of another agent (user_sim)": 1,
    }
    # The failed attempt stays in the prompt, as the model saw it.
    assert examples[0].prompt.messages[2] == {"role": "assistant", "content": "hmm"}


def test_hand_written_steps_export_and_steps_without_a_node_are_problems() -> None:
    tape = solve(None, json_agent(), 2, 2)
    edited = tape.fork(1)
    edited.append(FinalAnswer(answer="4", metadata=StepMetadata(agent="arith", node="main")))
    (example,) = tape_examples(edited, json_agent())
    assert example.llm_call_id is None
    assert example.output.content == '[{"kind": "final_answer", "answer": "4"}]'

    anonymous = tape.fork(1)
    anonymous.append(FinalAnswer(answer="4"))
    report = ExportReport()
    assert tape_examples(anonymous, json_agent(), report=report) == []
    assert "names no agent and node" in report.problems[0].reason


def test_training_examples_from_memory_with_dedupe_and_report() -> None:
    agent = json_agent()
    tapes = [solve(None, agent, 1, 2), solve(None, agent, 1, 2), solve(None, agent, 2, 2)]
    report = ExportReport()
    examples = list(training_examples(tapes, agent, report=report))
    assert len(examples) == 2
    assert report.skipped["duplicate"] == 1
    assert (report.tapes, report.tapes_used, report.examples) == (3, 2, 2)
    assert "2 examples (2 train, 0 validation) from 2 of 3 tapes." in report.summary()
    assert len(list(training_examples(tapes, agent, dedupe=False))) == 3


def test_tool_call_ids_survive_in_tools_mode() -> None:
    tape = solve(None, calc_agent(), 3, 4)
    call = next(s for s in tape.steps if isinstance(s, ToolCall))
    first = tape_examples(tape, calc_agent())[0]
    assert first.output.tool_calls[0].id == call.call_id
    second = tape_examples(tape, calc_agent())[1]
    tool_message = second.prompt.messages[-1]
    assert tool_message == {"role": "tool", "tool_call_id": call.call_id, "content": "7"}


def test_scripted_llm_answers_are_canonical() -> None:
    """Guard for the exactness test above: the scripted models answer in canonical form."""
    llm = ScriptedLLM(['[{"kind": "final_answer", "answer": "3"}]'])
    agent = json_agent()
    agent.llms = {"default": llm}
    result = run_sync(agent, question(1, 2))
    assert result.tape.kinds() == ["user", "final_answer"]


def test_tool_arguments_that_do_not_survive_json_are_problems() -> None:
    tape = question(1, 2)
    call = ToolCall(
        name="add",
        arguments={"a": (1, 2), "b": 3},
        metadata=StepMetadata(agent="calc", node="main", llm_call_id="x"),
    )
    tape.append(call)
    report = ExportReport()
    assert tape_examples(tape, calc_agent(), report=report) == []
    assert "would not parse its own answer back" in report.problems[0].reason
