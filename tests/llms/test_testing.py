"""`TestLLM`: tool wiring tested without writing a script."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from tapeagents import Agent, FinalAnswer, LLMNode, ToolCall, ToolEnvironment, ToolResult, run_sync
from tapeagents.llms import Prompt, TestLLM, resolve_llm
from tapeagents.llms.testing import example_arguments


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    number: Annotated[int, Field(ge=1)]


class Order(BaseModel):
    """Every kind of field a tool schema may hold."""

    name: Annotated[str, Field(min_length=3, max_length=5)]
    quantity: Annotated[int, Field(gt=10, le=20)]
    price: Annotated[float, Field(ge=0.5)]
    urgent: bool
    color: Color
    size: Literal["S", "M", "L"]
    tags: list[str]
    ship_to: Address
    note: str | None = None
    extras: dict[str, int] = {}


def test_example_arguments_satisfy_the_schema() -> None:
    arguments = example_arguments(Order.model_json_schema())
    order = Order.model_validate(arguments)  # raises if any argument is invalid
    assert set(arguments) == set(Order.model_fields)
    assert order.quantity == 11 and order.color is Color.RED and order.size == "S"
    assert example_arguments(Order.model_json_schema()) == arguments  # deterministic


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def greet(name: str, *, shout: bool = False) -> str:
    """Greet someone."""
    text = f"Hello, {name}!"
    return text.upper() if shout else text


def test_an_agent_calls_each_tool_once_then_answers() -> None:
    env = ToolEnvironment([add, greet])
    agent = Agent("helper", nodes=[LLMNode(tools=env.tools)], llms=TestLLM(text="All done."))
    result = run_sync(agent, "Use your tools.", env)
    tape = result.tape
    assert tape.kinds() == [
        "user",
        "tool_call",
        "tool_result",
        "tool_call",
        "tool_result",
        "assistant",
    ]
    calls = [step for step in tape if isinstance(step, ToolCall)]
    assert [(c.name, c.arguments) for c in calls] == [
        ("add", {"a": 0, "b": 0}),
        ("greet", {"name": "a", "shout": False}),
    ]
    results = [step for step in tape if isinstance(step, ToolResult)]
    assert [r.error for r in results] == [None, None]
    assert [r.content for r in results] == ["0", "Hello, a!"]
    assert result.reason == "awaiting_input" and tape.steps[-1].llm_text() == "All done."


def test_step_types_are_tools_too_and_a_stop_step_ends_the_run() -> None:
    env = ToolEnvironment([add])
    node = LLMNode(tools=env.tools, steps=[FinalAnswer])
    agent = Agent("solver", nodes=[node], llms="test")
    result = run_sync(agent, "What is 0 + 0?", env)
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "final_answer"]
    assert result.reason == "stopped"


async def test_only_the_named_tools_are_called() -> None:
    tools = [ToolEnvironment([add, greet]).tools[1].openai_schema()]
    llm = TestLLM(call_tools=["greet"])
    output = await llm.generate(Prompt(messages=[{"role": "user", "content": "x"}], tools=tools))
    assert [call.name for call in output.tool_calls] == ["greet"]
    assert output.content is None
    assert (
        await TestLLM(call_tools=[]).generate(Prompt(messages=[], tools=tools))
    ).content == "Done."


def test_resolve_llm_knows_test() -> None:
    llm = resolve_llm("test")
    assert isinstance(llm, TestLLM) and llm.model == "test"
    assert resolve_llm("test:my-model").model == "my-model"
