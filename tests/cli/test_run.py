"""`tapeagents resume` and `tapeagents replay`, with agents loaded from tests/cli/agents.py."""

from __future__ import annotations

import pytest

from tapeagents.store import TapeStore
from tests.cli.conftest import Invoke, make_invoke

CHAT = "tests.cli.agents:chat_agent"


def test_resume_with_a_message_appends_and_prints_steps(
    fresh: tuple[str, dict[str, str]],
) -> None:
    url, ids = fresh
    cli = make_invoke(url)
    result = cli("resume", ids["hello"][:8], "--agent", CHAT, "--message", "how are you")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2" in lines[0] and "user" in lines[0] and "how are you" in lines[0]
    assert "3" in lines[1] and "assistant" in lines[1] and "echo: how are you" in lines[1]
    assert "Finished: awaiting_input after 1 new step (1 LLM call" in result.stdout
    assert "--message" in result.stdout  # what to do next
    assert f"tapeagents show {ids['hello'][:8]}" in result.stdout
    store = TapeStore(url)
    try:
        tape = store.get(ids["hello"])
        assert tape.kinds() == ["user", "assistant", "user", "assistant"]
        assert store.status(ids["hello"]) == "awaiting_input"
        assert len(store.llm_calls_of(tape)) == 2
    finally:
        store.close()


def test_resume_a_fork_with_an_agent_that_brings_its_environment(
    fresh: tuple[str, dict[str, str]],
) -> None:
    url, ids = fresh
    cli = make_invoke(url)
    child = cli("fork", ids["calc"], "--at", "2").stdout.strip()
    result = cli("resume", child, "--agent", "tests.cli.agents:calc_with_env")
    assert result.exit_code == 0, result.output
    assert "tool_result" in result.stdout and "final_answer" in result.stdout
    assert "Finished: stopped after 2 new steps" in result.stdout
    # without an environment the pending action stays pending, and the hint says so
    child = cli("fork", ids["calc"], "--at", "2").stdout.strip()
    result = cli("resume", child, "--agent", "tests.cli.agents:calc_agent")
    assert "Finished: no_environment" in result.stdout and "--env" in result.stdout
    result = cli(
        "resume",
        child,
        "--agent",
        "tests.cli.agents:calc_agent",
        "--env",
        "tests.cli.agents:calc_env",
    )
    assert "Finished: stopped" in result.stdout


def test_resume_accepts_an_agent_instance_and_warns_about_another_agent(
    fresh: tuple[str, dict[str, str]],
) -> None:
    url, ids = fresh
    result = make_invoke(url)(
        "resume", ids["calc"], "--agent", "tests.cli.agents:ready_agent", "--message", "more?"
    )
    assert result.exit_code == 0, result.output
    assert "made by agent 'calc'; resuming it with 'chat'" in result.stderr
    assert "echo: more?" in result.stdout


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("tests.cli.agents", "is not of the form package.module:attribute"),
        ("tests.cli.nowhere:agent", "module 'tests.cli.nowhere' not found"),
        ("tests.cli.agents:nothing", "has no attribute 'nothing'. It has: "),
        ("tests.cli.agents:not_an_agent", "is not an Agent: it is a builtins.int"),
        ("tests.cli.agents:needs_arguments", "needs arguments (model)"),
        ("tests.cli.agents:broken_factory", "raised RuntimeError: no API key at "),
    ],
)
def test_a_bad_agent_path_says_what_is_wrong(
    cli: Invoke, ids: dict[str, str], path: str, message: str
) -> None:
    result = cli("resume", ids["hello"], "--agent", path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_the_missing_attribute_error_lists_the_candidates(cli: Invoke, ids: dict[str, str]) -> None:
    stderr = " ".join(
        cli("resume", ids["hello"], "--agent", "tests.cli.agents:chat").stderr.split()
    )
    assert "chat_agent" in stderr and "calc_with_env" in stderr and "ready_agent" in stderr


def test_a_bad_env_path(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("resume", ids["hello"], "--agent", CHAT, "--env", "tests.cli.agents:chat_agent")
    assert result.exit_code == 2
    assert "--env 'tests.cli.agents:chat_agent' is not an Environment" in result.stderr


def test_replay_passes_for_the_same_agent(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("replay", ids["calc"][:8], "--agent", "tests.cli.agents:calc_agent")
    assert result.exit_code == 0, result.output
    assert "replay passed (4 steps checked)" in result.stdout
    live = cli(
        "replay",
        ids["calc"],
        "--agent",
        "tests.cli.agents:calc_agent",
        "--env",
        "tests.cli.agents:calc_env",
    )
    assert live.exit_code == 0, live.output


def test_replay_reports_the_first_difference(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("replay", ids["calc"], "--agent", "tests.cli.agents:changed_calc_agent")
    assert result.exit_code == 1, result.output
    assert "replay differs at step 1" in result.stdout
    assert "recorded: tool_call" in result.stdout
    assert "Be terse." in result.stdout  # the prompt diff is in the report
