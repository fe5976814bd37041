"""A chat assistant with a calculator tool.

Runs offline on the local SmolLM2-135M-Instruct model by default; any litellm model with
`--model litellm:<name>` (for example `litellm:gpt-4o-mini`).
"""

from __future__ import annotations

import argparse
import ast
import operator
from collections.abc import AsyncIterator
from typing import Any

from tapeagents import (
    Agent,
    AssistantMessage,
    LLMNode,
    Node,
    Tape,
    ToolCall,
    ToolEnvironment,
    ToolResult,
    UserMessage,
    run_sync,
)
from tapeagents.llms import LLM, resolve_llm
from tapeagents.render import print_tape
from tapeagents.store import TapeStore

COMPUTE_PROMPT = """You are a calculator assistant. Call the calculator with the arithmetic
expression of the user's question, written with digits and + - * / ** ( ).
Examples: "What is 15 plus 27?" -> {"expression": "15 + 27"};
"How much is 120 times 3?" -> {"expression": "120 * 3"}."""

_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression with + - * / ** and parentheses.

    Args:
        expression: The expression, for example "(2 + 3) * 4".
    """

    def evaluate(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.operand))
        raise ValueError(f"unsupported expression: {ast.unparse(node)}")

    return evaluate(ast.parse(expression, mode="eval").body)


class Answer(Node):
    """States the calculator's last result (or its error) as the answer to the user."""

    async def generate(self, agent: Agent, tape: Tape[Any, Any]) -> AsyncIterator[AssistantMessage]:
        calls = {step.call_id: step for step in tape.steps if isinstance(step, ToolCall)}
        result = next((s for s in reversed(tape.steps) if isinstance(s, ToolResult)), None)
        if result is None:
            yield AssistantMessage(content="I could not compute that.")
            return
        call = calls.get(result.call_id)
        expression = call.arguments.get("expression", "?") if call else "?"
        if result.error:
            yield AssistantMessage(content=f"The calculator could not compute {expression}.")
        else:
            yield AssistantMessage(content=f"{expression} = {result.content}")


def make_agent(llm: LLM | str = "local") -> tuple[Agent, ToolEnvironment]:
    """The hello agent and the environment that runs its calculator.

    The "compute" node must call the calculator (`tool_choice="required"`: a local model is
    decoded under a grammar of the call, so the call always parses); the "answer" node states
    the result.
    """
    env = ToolEnvironment([calculator])
    compute = LLMNode(
        "compute", system_prompt=COMPUTE_PROMPT, tools=env.tools, tool_choice="required"
    )
    return Agent("hello", nodes=[compute, Answer("answer")], llms=resolve_llm(llm)), env


def main(argv: list[str] | None = None) -> Tape:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 12 times 7?")
    parser.add_argument("--model", default="local", help="model string (default: local)")
    parser.add_argument("--db", default=None, help="tape store URL (default: ./tapes.db)")
    args = parser.parse_args(argv)
    agent, env = make_agent(args.model)
    store = TapeStore(args.db)
    tape = Tape(steps=[UserMessage(content=args.question)])
    result = run_sync(agent, tape, env, max_steps=10, store=store)
    print_tape(result.tape)
    print(f"Run finished: {result.reason}. The tape is stored in {store.display_url}:")
    print(f"  tapeagents show {result.tape.id[:8]}      # the steps, readably")
    print(f"  tapeagents show {result.tape.id[:8]} --calls  # with the LLM calls behind them")
    print(
        f"  tapeagents replay {result.tape.id[:8]} --agent examples.hello.agent:make_agent"
        "  # re-run it against its recorded LLM calls"
    )
    print("  tapeagents ls                # all stored tapes")
    return result.tape


if __name__ == "__main__":
    main()
