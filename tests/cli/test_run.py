"""`tapeagents resume` and `tapeagents replay`, with agents loaded from tests/cli/agents.py."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tapeagents import LeaseHeld, Tape, ToolResult, UserMessage, run_sync
from tapeagents.store import TapeStore
from tests.cli.agents import TOOL_RUNS, chat_agent
from tests.cli.conftest import Invoke, make_invoke
from tests.store.conftest import postgres_database

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


def test_replay_runs_no_tool_of_the_agents_environment_unless_asked(
    fresh: tuple[str, dict[str, str]],
) -> None:
    url, ids = fresh
    with TapeStore(url) as store:  # an edited fork: the tool "answered" 7 instead of 5
        tape = store.get(ids["calc"])
        result = tape.steps[2]
        assert isinstance(result, ToolResult) and result.content == "5"
        edited = result.model_copy(update={"content": "7"})
        child = store.fork(tape, 3, edits={2: edited}).id
    cli = make_invoke(url)
    factory = "tests.cli.agents:calc_with_recording_env"  # returns (agent, env)
    TOOL_RUNS.clear()
    replayed = cli("replay", child, "--agent", factory)
    assert replayed.exit_code == 0, replayed.output
    assert "replay passed (3 steps checked)" in replayed.stdout
    assert TOOL_RUNS == []  # the edited answer came from the tape; the tool never ran
    assert "Pass --live to run its tools" in " ".join(replayed.stderr.split())

    live = cli("replay", child, "--agent", factory, "--live")
    assert live.exit_code == 1, live.output
    assert TOOL_RUNS == [(2, 3)]
    assert "replay differs at step 2" in live.stdout
    assert "The environment answered differently." in live.stdout

    TOOL_RUNS.clear()
    with_env = cli(
        "replay",
        child,
        "--agent",
        "tests.cli.agents:calc_agent",
        "--env",
        "tests.cli.agents:recording_env",
    )
    assert with_env.exit_code == 1, with_env.output
    assert TOOL_RUNS == [(2, 3)]
    assert "replay differs at step 2" in with_env.stdout

    no_env = cli("replay", child, "--agent", "tests.cli.agents:calc_agent", "--live")
    assert no_env.exit_code == 2
    assert "--live needs an environment" in no_env.stderr


def test_replay_reports_the_first_difference(cli: Invoke, ids: dict[str, str]) -> None:
    result = cli("replay", ids["calc"], "--agent", "tests.cli.agents:changed_calc_agent")
    assert result.exit_code == 1, result.output
    assert "replay differs at step 1" in result.stdout
    assert "recorded: tool_call" in result.stdout
    assert "Be terse." in result.stdout  # the prompt diff is in the report


# ----------------------------------------------------------------------------- leases


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TapeStore, str]]:
    """An empty store on SQLite and on PostgreSQL (scripts/with-postgres.sh): (store, url)."""
    urls = [f"sqlite:///{tmp_path / 'tapes.db'}"] if request.param == "sqlite" else None
    for url in urls or postgres_database():
        with TapeStore(url) as store:
            yield store, url


def test_resume_refuses_a_tape_that_a_live_run_holds_until_forced(
    any_store: tuple[TapeStore, str],
) -> None:
    store, url = any_store
    tape = run_sync(chat_agent(), Tape(steps=[UserMessage(content="hello")]), store=store).tape
    store.set_status(tape.id, "running")
    elsewhere = store.lease(tape.id)  # a run in another process, alive: it holds the lease
    cli = make_invoke(url)

    refused = cli("resume", tape.id[:8], "--agent", CHAT, "--message", "and you?")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    error = " ".join(refused.stderr.split())
    assert f"Tape {tape.id} is being run by pid {os.getpid()} on {socket.gethostname()}" in error
    assert "its lease expires in" in error and "tapeagents resume --force" in error
    assert refused.stdout == ""
    assert store.get(tape.id).kinds() == ["user", "assistant"]  # no false "interrupted"
    assert store.status(tape.id) == "running"

    forced = cli("resume", tape.id[:8], "--agent", CHAT, "--message", "and you?", "--force")
    assert forced.exit_code == 0, forced.output
    assert "echo: and you?" in forced.stdout
    assert store.get(tape.id).kinds() == ["user", "assistant", "user", "assistant"]
    assert store.status(tape.id) == "awaiting_input" and store.lease_holder(tape.id) is None
    with pytest.raises(LeaseHeld, match="took it over"):
        elsewhere.renew()


def test_resume_goes_on_once_a_killed_runs_lease_lapsed(any_store: tuple[TapeStore, str]) -> None:
    store, url = any_store
    tape = run_sync(chat_agent(), Tape(steps=[UserMessage(content="hello")]), store=store).tape
    store.set_status(tape.id, "running")
    store.lease(tape.id, ttl=0.3)  # its run was killed: nobody renews the lease
    time.sleep(0.5)
    result = make_invoke(url)("resume", tape.id, "--agent", CHAT, "--message", "still there?")
    assert result.exit_code == 0, result.output
    assert "echo: still there?" in result.stdout
    assert store.status(tape.id) == "awaiting_input"
