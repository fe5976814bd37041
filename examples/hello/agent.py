"""A chat assistant with a calculator tool.

Runs offline on the local SmolLM2-135M-Instruct model by default; any litellm model with
`--model litellm:<name>` (for example `litellm:gpt-4o-mini`).
"""

from __future__ import annotations

import argparse
import ast
import operator

from tapeagents import Agent, LLMNode, Tape, ToolEnvironment, UserMessage, run_sync
from tapeagents.llms import LLM, resolve_llm
from tapeagents.render import print_tape
from tapeagents.store import TapeStore

SYSTEM_PROMPT = """You are a helpful assistant. Answer briefly.
Use the calculator tool for any arithmetic."""

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


def make_agent(llm: LLM | str = "local") -> tuple[Agent, ToolEnvironment]:
    """The hello agent and the environment that runs its calculator."""
    env = ToolEnvironment([calculator])
    node = LLMNode("chat", system_prompt=SYSTEM_PROMPT, tools=env.tools)
    return Agent("hello", nodes=[node], llms=resolve_llm(llm)), env


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
    print("  tapeagents ls                # all stored tapes")
    return result.tape


if __name__ == "__main__":
    main()
