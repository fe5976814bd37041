"""`tapeagents batch`: run an agent on every task of a JSONL file, resumably, with progress."""

from __future__ import annotations

import inspect
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from tapeagents.cli.common import (
    DbOption,
    err,
    fail,
    open_store,
    out,
)
from tapeagents.cli.run import AgentOption
from tapeagents.environment import Environment
from tapeagents.errors import StoreError, UsageError
from tapeagents.loading import import_object, load_agent

if TYPE_CHECKING:
    from tapeagents.batch import EnvFactory

__all__ = ["app"]

app = typer.Typer()

PANEL = "Runs"

EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        metavar="MODULE:ATTR",
        help="The environment: an Environment shared by all tasks, or a function called for each "
        "task (with the task, or with no arguments) that returns one; it is closed after the task.",
    ),
]
_SHOWN_FAILURES = 5


def _environments(path: str) -> tuple[Environment | None, EnvFactory | None]:
    """`--env`: an Environment shared by all tasks, or a factory called per task (with the task
    when it takes an argument, else with none)."""
    obj = import_object(path, "--env")
    if isinstance(obj, Environment):
        return obj, None
    if not callable(obj):
        raise UsageError(
            f"--env {path!r} is neither an Environment nor a function that makes one; point it "
            "at an Environment, or at a function of no arguments (or of the task) returning one."
        )
    try:
        takes_task = len(inspect.signature(obj).parameters) > 0
    except (TypeError, ValueError):
        takes_task = False

    def make(task: Any) -> Any:
        made = obj(task) if takes_task else obj()
        if not isinstance(made, Environment) and not inspect.isawaitable(made):
            raise UsageError(f"--env {path!r} returned {type(made).__name__}, not an Environment.")
        return made

    return None, make


def _resume_command(batch_id: str, display_url: str) -> str:
    """The command line to run again, with the batch id made explicit (and no password)."""
    argv = list(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("tapeagents") else None
    if argv and "batch" in argv:
        for i, arg in enumerate(argv):
            if arg == "--db" and i + 1 < len(argv):
                argv[i + 1] = display_url
            elif arg.startswith("--db="):
                argv[i] = f"--db={display_url}"
        if "--batch-id" not in argv:
            argv += ["--batch-id", batch_id]
        return "tapeagents " + shlex.join(argv)
    return f"tapeagents batch ... --batch-id {batch_id} (the same options as before)"


@app.command(rich_help_panel=PANEL)
def batch(
    agent_path: AgentOption,
    tasks: Annotated[
        Path,
        typer.Option(
            "--tasks",
            metavar="FILE.jsonl",
            help="Tasks, one JSON object a line, each with a unique 'id' (and a 'message' to "
            "start the tape with).",
        ),
    ],
    env_path: EnvOption = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Tapes running at once (per worker with Ray).")
    ] = 16,
    backend: Annotated[
        str, typer.Option(help="asyncio (this process) or ray (Ray workers; extra 'ray').")
    ] = "asyncio",
    batch_id: Annotated[
        str | None,
        typer.Option(
            "--batch-id",
            help="Name of the batch in the store; running again with it resumes. Default: the "
            "agent's name and a hash of the task ids.",
        ),
    ] = None,
    max_steps: Annotated[int, typer.Option(min=1, help="Step limit of each tape.")] = 100,
    retry_failed: Annotated[
        bool, typer.Option(help="Also resume tapes that ended in an error.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Run an agent on every task of a JSONL file: concurrently, resumably, with progress.

    Each task becomes a tape tagged batch:ID in the store. Running the same command again
    skips finished tapes and resumes interrupted ones. Exits with 1 if a task failed or a line
    of the task file was skipped.
    """
    from tapeagents.batch import BatchOptions, default_batch_id, read_tasks, run_batch_sync

    if backend not in ("asyncio", "ray"):
        raise fail(f"--backend must be asyncio or ray, not {backend!r}.")
    agent, env = load_agent(agent_path)
    env_factory = None
    if env_path is not None:
        env, env_factory = _environments(env_path)
    found = read_tasks(tasks)
    console = err()
    for number, problem in found.problems:
        console.print(
            f"[yellow]{escape(str(tasks))}, line {number}:[/] {escape(problem)}; skipped."
        )
    if not found.tasks:
        raise fail(f"{tasks} holds no usable task; each line must be a JSON object with an 'id'.")
    ids = [str(task["id"]) for task in found.tasks]
    batch_id = batch_id or default_batch_id(agent.name, ids)
    with open_store(db, create=True) as store:
        console.print(
            f"Batch [bold]{escape(batch_id)}[/]: {len(found.tasks)} tasks, agent "
            f"{escape(agent.name)!s}, concurrency {concurrency}, store {escape(store.display_url)}"
        )
        hint = f"Resume with: {_resume_command(batch_id, store.display_url)}"
        options = BatchOptions(
            concurrency=concurrency,
            batch_id=batch_id,
            backend="ray" if backend == "ray" else "asyncio",
            max_steps=max_steps,
            retry_failed=retry_failed,
        )
        try:
            summary = run_batch_sync(
                agent,
                found.tasks,
                store=store,
                env_factory=env_factory,
                env=env,
                options=options,
                progress=True,
                console=console,
                resume_hint=hint,
            )
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except StoreError as error:
            console.print(f"[bold red]Error:[/] {escape(str(error))}")
            console.print(escape(hint))
            raise typer.Exit(2) from None
    failures = [r for r in summary.ran if r.failed]
    for result in failures[:_SHOWN_FAILURES]:
        console.print(f"[red]Task {escape(result.task_id)} failed:[/] {escape(result.error or '')}")
    if len(failures) > _SHOWN_FAILURES:
        console.print(f"... and {len(failures) - _SHOWN_FAILURES} more failed tasks.")
    out().print(f"See the tapes with: tapeagents ls --tag batch:{escape(batch_id)}")
    if summary.failed or found.problems:
        raise typer.Exit(1)
