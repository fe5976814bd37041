"""The hello example: a chat assistant whose calculator runs in a ToolEnvironment."""

from __future__ import annotations

import pytest

from examples.hello.agent import calculator, main, make_agent
from tapeagents import ToolResult, run_sync
from tapeagents.llms import LLMOutput, ScriptedLLM, tool_call


def test_the_assistant_uses_the_calculator_and_answers() -> None:
    llm = ScriptedLLM([LLMOutput(tool_calls=[tool_call("calculator", '{"expression": "12 * 7"}')])])
    agent, env = make_agent(llm)
    result = run_sync(agent, "What is 12 times 7?", env)
    assert result.reason == "awaiting_input"
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    assert isinstance(result.tape[2], ToolResult) and result.tape[2].content == "84"
    assert result.tape[3].content == "12 * 7 = 84"


def test_a_calculator_error_is_answered_as_such() -> None:
    llm = ScriptedLLM([LLMOutput(tool_calls=[tool_call("calculator", '{"expression": "1 / 0"}')])])
    agent, env = make_agent(llm)
    result = run_sync(agent, "What is 1 over 0?", env)
    assert result.tape.kinds() == ["user", "tool_call", "tool_result", "assistant"]
    assert result.tape[2].error and "could not compute 1 / 0" in result.tape[3].content


def test_calculator_is_safe_and_says_what_it_cannot_do() -> None:
    assert calculator("(2 + 3) * 4 - 2 ** 3 / 4") == 18
    with pytest.raises(ValueError, match="unsupported expression"):
        calculator("__import__('os').system('true')")


def test_main_prints_and_stores_the_tape(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    db = f"sqlite:///{tmp_path / 'tapes.db'}"
    tape = main(["What is 1 + 1?", "--model", "scripted", "--db", db])
    out = capsys.readouterr().out
    assert tape.kinds() == ["user", "assistant"]
    assert "What is 1 + 1?" in out and "Run finished: awaiting_input" in out
    assert f"tapeagents show {tape.id[:8]}" in out
    # the replay command it prints works as printed
    from tests.cli.conftest import make_invoke

    line = next(line for line in out.splitlines() if "tapeagents replay" in line)
    replayed = make_invoke(db)(*line.split("#")[0].split()[1:])
    assert replayed.exit_code == 0 and "replay passed" in replayed.output, replayed.output
    from tapeagents.store import TapeStore

    assert TapeStore(db).get(tape.id).model_dump_json() == tape.model_dump_json()
