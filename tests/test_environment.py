"""ToolEnvironment: typed Python functions as tools."""

from __future__ import annotations

import asyncio
from typing import Literal

from tapeagents import Tape, ToolCall, ToolEnvironment, ToolResult
from tapeagents.environment import ToolSpec, react_sync


def convert(amount: float, currency: Literal["EUR", "USD"] = "EUR") -> dict:
    """Convert an amount of money.

    Longer explanation that is not part of the summary.

    Args:
        amount: How much money, in the source currency.
        currency: The target currency,
            written as an ISO code.
    """
    return {"amount": amount * 2, "currency": currency}


async def slow_echo(text: str) -> str:
    """Echo text after a pause."""
    await asyncio.sleep(0)
    return text


def test_schema_comes_from_signature_and_docstring() -> None:
    spec = ToolSpec.from_function(convert)
    assert spec.name == "convert"
    assert spec.description == "Convert an amount of money."
    props = spec.parameters["properties"]
    assert props["amount"] == {
        "type": "number",
        "description": "How much money, in the source currency.",
    }
    assert props["currency"]["enum"] == ["EUR", "USD"]
    assert props["currency"]["description"] == "The target currency, written as an ISO code."
    assert spec.parameters["required"] == ["amount"]
    assert spec.openai_schema()["function"]["name"] == "convert"


def react(env: ToolEnvironment, call: ToolCall) -> ToolResult:
    result = react_sync(env, call, Tape())
    assert isinstance(result, ToolResult)
    return result


def test_sync_and_async_tools_run_and_results_are_text() -> None:
    env = ToolEnvironment([convert, slow_echo])
    result = react(env, ToolCall(name="convert", arguments={"amount": "2.5"}, call_id="c1"))
    assert result.content == '{"amount": 5.0, "currency": "EUR"}' and result.call_id == "c1"
    assert react(env, ToolCall(name="slow_echo", arguments={"text": "hi"})).content == "hi"


def test_invalid_arguments_unknown_tools_and_raising_tools_are_error_results() -> None:
    def divide(a: int, b: int) -> float:
        """Divide."""
        return a / b

    env = ToolEnvironment([convert, divide])
    bad = react(env, ToolCall(name="convert", arguments={"amount": "lots"}))
    assert bad.error and "Invalid arguments for convert" in bad.error and "amount" in bad.error
    unknown = react(env, ToolCall(name="teleport"))
    assert unknown.error == "Unknown tool 'teleport'. Available tools: convert, divide."
    boom = react(env, ToolCall(name="divide", arguments={"a": 1, "b": 0}))
    assert boom.error == "ZeroDivisionError: division by zero"
    assert boom.content.startswith("Error: ")
