"""The batch entry points: `run_batch` (async, results as they finish) and `run_batch_sync`.

They check the tasks, resolve the batch id, make the `BatchRun` and choose the backend that
runs it: this process's event loop (`BatchRun.run_tasks`) or Ray workers (`run_on_ray`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from tapeagents.agent import Agent
from tapeagents.batch.options import BatchOptions
from tapeagents.batch.progress import BatchProgress, summary_table
from tapeagents.batch.ray_backend import run_on_ray
from tapeagents.batch.results import BatchSummary, TaskResult
from tapeagents.batch.runner import BatchRun, EnvFactory
from tapeagents.batch.tasks import Task, check_tasks, default_batch_id
from tapeagents.environment import Environment
from tapeagents.errors import StoreError, UsageError
from tapeagents.sync import run_blocking

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["run_batch", "run_batch_sync"]


async def run_batch(
    agent: Agent,
    tasks: Iterable[Task],
    *,
    store: TapeStore | None = None,
    env_factory: EnvFactory | None = None,
    env: Environment | None = None,
    options: BatchOptions | None = None,
) -> AsyncIterator[TaskResult]:
    """Run `agent` on every task, `options.concurrency` tapes at a time; yield results as they
    finish.

    Each task (a dict with an `id` and inputs) becomes a tape: the task as its context, its
    `message` (if any) as the first user message, `metadata.task_id` set and the tag
    `batch:<batch_id>`. A task that raises, or whose run ends in an error, is stored with
    status "error" and its error in `metadata.error`; the batch goes on. A store failure
    stops the batch (`StoreError`, saying how to resume).

    Running again with the same batch id resumes: finished tapes are skipped (reported
    with `skipped=True`), interrupted ones continue from their last step.

    Args:
        agent: The agent; shared by all tasks (its LLMs' rate limits and connections too).
        tasks: Dicts with a unique `id` (string or integer) and the task's inputs.
        store: Where the tapes go; without one nothing is resumable.
        env_factory: Makes each task's environment (called with the task; may be async);
            it is closed when the task ends.
        env: One environment shared by every task (not closed), instead of `env_factory`.
        options: Concurrency, batch id, backend, step limit...: see `BatchOptions`.

    Yields:
        A `TaskResult` per task, in the order they finish (skipped tasks first). To stop
        early, close the generator (`async with contextlib.aclosing(run_batch(...))`): the
        running tapes are cut off and keep the status "running", to be resumed later.

    Example:
        >>> async def main():
        ...     options = BatchOptions(concurrency=32)
        ...     async for result in run_batch(agent, tasks, store=store, options=options):
        ...         print(result.task_id, result.status)
    """
    options = options or BatchOptions()
    if env is not None and env_factory is not None:
        raise UsageError("Give env_factory= (one environment per task) or env= (shared), not both.")
    checked = check_tasks(tasks)
    batch_id = options.batch_id or default_batch_id(agent.name, [task_id for task_id, _ in checked])
    batch = BatchRun(
        agent, batch_id=batch_id, store=store, env_factory=env_factory, env=env, options=options
    )
    if options.backend == "ray":
        results = run_on_ray(batch, checked)
    else:
        results = batch.run_tasks(checked, options.concurrency)
    try:
        async for result in results:
            yield result
    except StoreError as error:
        raise StoreError(
            f"Batch {batch_id!r} stopped: {str(error).rstrip('.')}. Finished tapes are stored; "
            "once the store "
            f"works again, run the batch again (batch id {batch_id!r}) to resume it."
        ) from None
    finally:
        await results.aclose()  # type: ignore[attr-defined]
        await batch.close_llms()


def run_batch_sync(
    agent: Agent,
    tasks: Iterable[Task],
    *,
    store: TapeStore | None = None,
    env_factory: EnvFactory | None = None,
    env: Environment | None = None,
    options: BatchOptions | None = None,
    progress: bool = False,
    console: Console | None = None,
    resume_hint: str | None = None,
) -> BatchSummary:
    """Blocking `run_batch`: run every task and return the `BatchSummary`.

    With `progress=True` a progress bar runs on `console` (default: stderr) and a summary
    table is printed at the end. Ctrl-C stops the batch with a consistent store, prints how to
    resume (`resume_hint`, by default: run again with the same batch id) and raises
    `KeyboardInterrupt`.

    Example:
        >>> from tapeagents import Agent, LLMNode
        >>> from tapeagents.llms import ScriptedLLM
        >>> agent = Agent("echo", nodes=[LLMNode()], llms=ScriptedLLM(lambda p: "Hi!"))
        >>> tasks = [{"id": 1, "message": "Hello"}]
        >>> summary = run_batch_sync(agent, tasks, options=BatchOptions(batch_id="demo"))
        >>> summary.by_status()
        {'awaiting_input': 1}
    """
    options = options or BatchOptions()
    checked = check_tasks(tasks)  # for the task count and the default batch id, shown early
    batch_id = options.batch_id or default_batch_id(agent.name, [task_id for task_id, _ in checked])
    options = replace(options, batch_id=batch_id)
    summary = BatchSummary(batch_id)
    console = console or Console(stderr=True)

    async def drain() -> None:
        view = BatchProgress(len(checked), batch_id=batch_id, console=console) if progress else None
        with view or nullcontext():
            results = run_batch(
                agent,
                [task for _, task in checked],
                store=store,
                env_factory=env_factory,
                env=env,
                options=options,
            )
            async for result in results:
                if store is not None:
                    result.tape = None  # the store has it; a long batch should not hold them all
                summary.add(result)
                if view is not None:
                    view.update(result)

    started = time.perf_counter()
    try:
        run_blocking(
            drain(), sync_name="run_batch_sync", use_instead="async for result in run_batch(...)"
        )
    except KeyboardInterrupt:
        summary.interrupted = True
        hint = resume_hint or f"Run the batch again with batch_id={batch_id!r} to resume it."
        console.print(
            f"[yellow]Interrupted:[/] {len(summary.results)} of {len(checked)} tasks done; the "
            f"others are stored as they were. {escape(hint)}"
        )
        raise
    finally:
        summary.seconds = time.perf_counter() - started
    if progress:
        console.print(summary_table(summary))
    return summary
