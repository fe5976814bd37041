"""Commands that run an agent on a stored tape: resume, replay."""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tapeagents.cli.common import (
    DbOption,
    err,
    open_store,
    out,
)
from tapeagents.errors import UsageError
from tapeagents.llms import LLMCall
from tapeagents.loading import load_agent, load_environment
from tapeagents.orchestrator import Finished, LLMCallMade, StepAppended, run
from tapeagents.render import text as render
from tapeagents.render.formats import short_id
from tapeagents.steps import NodeFailure, UserMessage

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.environment import Environment
    from tapeagents.replay import ReplayReport
    from tapeagents.store import TapeStore
    from tapeagents.tape import Tape

__all__ = ["app"]

app = typer.Typer()

PANEL = "Runs"

AgentOption = Annotated[
    str,
    typer.Option(
        "--agent",
        metavar="MODULE:ATTR",
        help="The agent: an Agent, or a function with no arguments returning one or "
        "(agent, env), as package.module:attribute.",
    ),
]
EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        metavar="MODULE:ATTR",
        help="The environment: an Environment, or a function with no arguments returning one.",
    ),
]
IdArgument = Annotated[str, typer.Argument(metavar="ID", help="Tape id or a unique prefix.")]

_HINTS = {
    "awaiting_input": "the agent waits for the user; answer with --message TEXT",
    "no_environment": "actions are pending; pass --env MODULE:ATTR to answer them",
    "max_steps": "the step limit was reached; resume again to continue",
}


def _agent_and_env(agent_path: str, env_path: str | None) -> tuple[Agent, Environment | None]:
    agent, env = load_agent(agent_path)
    if env_path is not None:
        env = load_environment(env_path)
    return agent, env


@app.command(rich_help_panel=PANEL)
def resume(
    tape_id: IdArgument,
    agent_path: AgentOption,
    env_path: EnvOption = None,
    max_steps: Annotated[
        int, typer.Option(min=1, help="Stop after appending this many steps.")
    ] = 100,
    message: Annotated[
        str | None, typer.Option(help="Append this user message before running.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume even if another run holds the tape (one that was killed less than "
            "TAPEAGENTS_LEASE_SECONDS ago); a run still alive there then fails.",
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Continue a stored tape with an agent, printing steps as they are appended.

    A tape that another run is running is refused (its lease is alive): wait for that run to
    end, or pass --force for a run you know was killed.
    """
    agent, env = _agent_and_env(agent_path, env_path)
    with open_store(db) as store:
        full_id = store.resolve_id(tape_id)
        holder = store.lease_holder(full_id)
        if holder is not None and not force:  # refused before anything is printed (run checks too)
            from tapeagents.store.leases import held_error

            raise held_error(holder)
        tape = store.get(full_id)
        made_by = store.summary(full_id).agent
        if made_by and made_by != agent.name:
            err().print(
                f"[dim]Note: tape {short_id(full_id)} was made by agent {made_by!r}; "
                f"resuming it with {agent.name!r}.[/]"
            )
        if message is not None:
            tape.append(UserMessage(content=message))
        console = out()
        if message is not None:
            console.print(render.step_line(len(tape) - 1, tape.steps[-1]))
        try:
            finished, appended, calls = asyncio.run(
                _drive(agent, tape, env, max_steps=max_steps, store=store, force=force)
            )
        except Exception:
            if isinstance(tape.last, NodeFailure):
                err().print(
                    f"[bold red]The agent raised an exception;[/] the failure is recorded on tape "
                    f"{short_id(full_id)} (status error)."
                )
            raise
        from_env = db is not None and db == os.environ.get("TAPEAGENTS_DB")
        db_hint = f" --db {store.display_url}" if db and not from_env else ""
    reason = finished.reason
    style = "red" if reason == "error" else "green"
    console.print(
        f"[{style}]Finished: {reason}[/] after {appended} new step{'' if appended == 1 else 's'}"
        f" ({render.totals(calls)})."
    )
    if finished.error:
        console.print(render.strip_controls(finished.error), style="red", markup=False)
    if reason in _HINTS:
        console.print(f"[dim]Next: {_HINTS[reason]}.[/]")
    console.print(f"See the tape with: tapeagents show {short_id(tape.id)}{db_hint}")
    if reason == "error":
        raise typer.Exit(1)


async def _drive(
    agent: Agent,
    tape: Tape[Any, Any],
    env: Environment | None,
    *,
    max_steps: int,
    store: TapeStore,
    force: bool = False,
) -> tuple[Finished, int, list[LLMCall]]:
    """Run the agent, printing each step as it is stored.

    Returns:
        The `Finished` event, how many steps the run appended and the LLM calls it made.
    """
    console = out()
    appended = 0
    calls: list[LLMCall] = []
    async with AsyncExitStack() as stack:
        if env is not None:
            await stack.enter_async_context(env)
        async for event in run(agent, tape, env, max_steps=max_steps, store=store, force=force):
            if isinstance(event, StepAppended):
                console.print(render.step_line(event.index, event.step))
                appended += 1
            elif isinstance(event, LLMCallMade):
                calls.append(event.call)
            elif isinstance(event, Finished):
                return event, appended, calls
    raise AssertionError("run() ended without a Finished event")


@app.command(rich_help_panel=PANEL)
def replay(
    tape_id: IdArgument,
    agent_path: AgentOption,
    env_path: EnvOption = None,
    live: Annotated[
        bool,
        typer.Option(
            "--live",
            help="Answer actions with the environment that --agent returns (its tools run) "
            "and compare its observations with the tape's.",
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Re-run an agent against a tape's recorded LLM calls and report the first difference.

    The world's answers come from the tape, so no tool runs, unless --env is given (or --live,
    for the environment that --agent returns). Exits with 0 when the agent reproduces the tape
    and 1 when it does not.
    """
    agent, env = _agent_and_env(agent_path, env_path)
    if env_path is None and not live:
        if env is not None:
            err().print(
                "[dim]Note: the environment that --agent returns is not used; the world's "
                "answers come from the tape. Pass --live to run its tools.[/]"
            )
        env = None  # replay promises that no tool runs unless asked
    elif env is None:
        raise UsageError(
            f"--live needs an environment, but --agent {agent_path!r} returns only an agent. "
            "Pass --env MODULE:ATTR, or return (agent, environment) from the --agent function."
        )
    with open_store(db) as store:
        tape = store.get(store.resolve_id(tape_id))
        llm_calls = store.llm_calls_of(tape)
    report = asyncio.run(_replay(agent, tape, llm_calls, env))
    typer.echo(report.explain())  # as is: the report may hold a diff that wrapping would garble
    if not report.passed:
        raise typer.Exit(1)


async def _replay(
    agent: Agent, tape: Tape[Any, Any], llm_calls: list[LLMCall], env: Environment | None
) -> ReplayReport:
    from tapeagents.replay import replay

    async with AsyncExitStack() as stack:
        if env is not None:
            await stack.enter_async_context(env)
        return await replay(agent, tape, llm_calls=llm_calls, env=env)
