"""The expert always succeeds, its tapes are the student's training data, the teacher runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tapeagents.environments.form_filler import (
    BEHAVIOURS,
    CompactNode,
    SetField,
    companies,
    evaluate,
    expert_agent,
    get_form,
    make_goal,
    make_goals,
    run_dialogue,
    student_agent,
    teacher_agent,
)

from tapeagents import Reasoning, UserMessage
from tapeagents.export import ExportReport, check_exact, training_examples
from tapeagents.llms import LLMOutput, Prompt, ScriptedLLM, tool_call

ALL_GOALS = make_goals(behaviours=(*BEHAVIOURS, "nonsense")) + [
    make_goal(None, "unknown_form", company=company) for company in companies()
]


async def test_the_expert_fills_every_form_with_every_behaviour() -> None:
    dialogues = await evaluate(expert_agent(), ALL_GOALS)
    failed = [d.score for d in dialogues if not d.score.correct or d.score.unanswered_questions]
    assert failed == []
    assert all(d.reason == "stopped" and d.score.agent_errors == 0 for d in dialogues)


async def test_expert_steps_are_exactly_what_the_compact_node_would_emit(tmp_path) -> None:
    from tapeagents.store import TapeStore

    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    goal = make_goal(get_form("book_room"), "changes_mind")
    dialogue = await run_dialogue(expert_agent(), goal, store=store)
    calls = {call.id: call for call in store.llm_calls_of(dialogue.tape)}
    node = CompactNode()
    for step in dialogue.tape:
        if step.metadata.agent == "expert":
            call = calls[step.metadata.llm_call_id]
            assert call.model == "expert"
            (parsed,) = node.parse(call.output)
            assert parsed.llm_dict() == step.llm_dict() and parsed.kind == step.kind
    # the student rebuilds exactly the prompts the expert decided on
    report = check_exact(dialogue.tape, student_agent(ScriptedLLM(["unused"])), store)
    assert report.exact and report.checked == len(calls), report.explain()


def prompt_key(prompt: Prompt) -> str:
    return json.dumps(prompt.messages, sort_keys=True)


async def test_expert_tapes_export_for_the_student_as_a_function_of_its_prompt() -> None:
    dialogues = await evaluate(expert_agent(), make_goals("train"))
    report = ExportReport()
    student = student_agent(ScriptedLLM(["unused"]))
    examples = list(training_examples([d.tape for d in dialogues], student, report=report))
    assert report.problems == [] and report.tapes_used == len(dialogues)
    answers: dict[str, str] = {}
    for example in examples:  # one answer per prompt: the task is learnable from the prompt
        key = prompt_key(example.prompt)
        assert answers.setdefault(key, example.output.content) == example.output.content
        assert len(example.prompt.messages) == 2 and example.prompt.tools is None
        assert len(json.dumps(example.prompt.messages)) < 1200  # a short prompt
    values = [
        (e.prompt.messages[1]["content"], json.loads(e.output.content)[0]["value"])
        for e in examples
        if '"set_field"' in e.output.content
    ]
    assert values and all(value in message for message, value in values)  # copied verbatim


async def test_a_student_that_answers_like_the_expert_solves_unseen_forms() -> None:
    goals = make_goals("test")
    expert = await evaluate(expert_agent(), goals)
    answers = {}
    for dialogue in expert:
        for example in training_examples([dialogue.tape], student_agent(ScriptedLLM(["x"]))):
            answers[prompt_key(example.prompt)] = example.output.content
    llm = ScriptedLLM(lambda prompt: answers[prompt_key(prompt)])
    dialogues = await evaluate(student_agent(llm), goals)
    assert all(d.score.correct for d in dialogues)
    system = llm.prompts[-3].messages[0]["content"]
    assert "Left:" in system and "Filled:" in system


def test_the_compact_prompt_lists_only_the_open_forms_remaining_fields() -> None:
    from tapeagents.environments.form_filler import FieldSet, FormOpened, compact_messages

    from tapeagents import Tape

    form = get_form("book_room")
    tape: Tape[Any, Any] = Tape(
        steps=[
            UserMessage(content="I'd like to book a room."),
            FormOpened(name=form.name, description=form.description, parameters=form.parameters),
            FieldSet(field="guest_name", value="Chen Wei"),
        ]
    )
    system, user = compact_messages(tape)
    assert "Filled: guest_name\n" in system["content"]
    assert "nights (whole number 1-30)" in system["content"]
    assert "room_type (one of: single, double, suite)" in system["content"]
    assert "special_requests (optional)" in system["content"]
    assert "guest_name (" not in system["content"] and "book_room" in system["content"]
    assert user == {"role": "user", "content": "Set guest_name = Chen Wei."}


def teacher_llm(prompt: Prompt) -> LLMOutput:
    """A scripted strong model: thinks when offered no tools, else takes the next action."""
    if prompt.tools is None:
        return LLMOutput(content="The user wants a late checkout; next I look for the form.")
    called = [
        call["function"]["name"] for m in prompt.messages for call in m.get("tool_calls") or []
    ]
    if "find_form" not in called:
        return LLMOutput(tool_calls=[tool_call("find_form", '{"query": "late checkout"}')])
    if "open_form" not in called:
        return LLMOutput(tool_calls=[tool_call("open_form", '{"name": "late_checkout"}')])
    return LLMOutput(
        content="Sure!",
        tool_calls=[
            tool_call(
                "ask_user",
                '{"field": "reservation_code", "question": "What is your reservation code?"}',
            )
        ],
    )


async def test_the_teacher_thinks_then_acts_and_its_tapes_export_exactly(tmp_path) -> None:
    from tapeagents.store import TapeStore

    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    llm = ScriptedLLM(teacher_llm)
    teacher = teacher_agent(llm)
    goal = make_goal(get_form("late_checkout"), "happy")
    dialogue = await run_dialogue(teacher, goal, max_turns=1, store=store)
    kinds = dialogue.tape.kinds()
    assert kinds[:4] == ["user", "reasoning", "find_form", "form_candidates"]
    assert kinds[-3:] == ["reasoning", "reasoning", "ask_user"]  # text beside a call: a thought
    act_prompt = llm.prompts[-1]
    assert {t["function"]["name"] for t in act_prompt.tools} >= {"set_field", "submit_form"}
    assert '"reservation_code"' in act_prompt.messages[0]["content"]  # the open form's schema
    assert "Harborview Hotels" in act_prompt.messages[0]["content"]
    report = check_exact(dialogue.tape, teacher_agent(ScriptedLLM(teacher_llm)), store)
    assert report.exact, report.explain()
    # the student cannot write the teacher's reasoning: the exporter says so
    export = ExportReport()
    assert list(training_examples([dialogue.tape], student_agent(llm), report=export)) == []
    assert "has no node 'think'" in export.problems[0].reason
    assert isinstance(dialogue.tape[1], Reasoning)


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_expert_tapes_start_with_the_search_and_set_values_as_typed(behaviour) -> None:
    goal = make_goal(get_form("report_bug"), behaviour)
    dialogue = await run_dialogue(expert_agent(), goal)
    assert dialogue.tape.kinds()[1:5] == [
        "find_form",
        "form_candidates",
        "open_form",
        "form_opened",
    ]
    for step in dialogue.tape:
        if isinstance(step, SetField):
            assert isinstance(step.value, str)


async def test_a_teacher_without_the_think_node_exports_for_the_student() -> None:
    def model(prompt: Prompt) -> LLMOutput:
        output = teacher_llm(prompt)
        return output.model_copy(update={"content": None})  # tool calls only

    teacher = teacher_agent(ScriptedLLM(model), think=False)
    assert [node.name for node in teacher.nodes] == ["act"]
    goal = make_goal(get_form("late_checkout"), "happy")
    dialogue = await run_dialogue(teacher, goal, max_turns=1)
    assert dialogue.tape.kinds()[1:] == [
        "find_form",
        "form_candidates",
        "open_form",
        "form_opened",
        "ask_user",
    ]
    report = ExportReport()
    examples = list(
        training_examples([dialogue.tape], student_agent(ScriptedLLM(["x"])), report=report)
    )
    assert report.problems == [] and len(examples) == 3
    assert json.loads(examples[1].output.content) == [
        {"kind": "open_form", "name": "late_checkout"}
    ]


async def test_the_expert_recovers_from_its_deliberate_slips(tmp_path) -> None:
    from tapeagents.export import Selection
    from tapeagents.store import TapeStore

    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    expert = expert_agent(slips=0.3, seed=1)
    dialogues = await evaluate(expert, make_goals(company="bluepeak"), max_turns=40)
    assert all(d.score.correct for d in dialogues)
    slips = [
        (d.tape.id, i)
        for d in dialogues
        for i, step in enumerate(d.tape.steps)
        if step.metadata.extra.get("slip")
    ]
    assert len(slips) > 5
    assert sum(d.score.agent_errors + d.score.validation_errors for d in dialogues) > 0
    for dialogue in dialogues:
        store.save(dialogue.tape)
    for tape_id, index in slips:
        store.annotate(tape_id, index, label="slip")
    report = ExportReport()
    student = student_agent(ScriptedLLM(["x"]))
    examples = list(
        training_examples(store, student, Selection(drop_labels=["slip"]), report=report)
    )
    assert report.skipped["step labelled 'slip'"] == len(slips) and report.problems == []
    slipped = {(tape_id, index) for tape_id, index in slips}
    assert not any((e.tape_id, e.start) in slipped for e in examples)
