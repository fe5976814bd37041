"""Many tapes at once: one agent on many tasks, concurrently, resumably, into one store.

Each task becomes a tape whose id is derived from the batch id and the task id, tagged
`batch:<id>`, with the task id in `tape.metadata.task_id` (an indexed column of the store) and
the task in `tape.context`. Every tape runs through `tapeagents.run(..., store=store)`, so each
step is stored as it happens and a tape that was cut off keeps the status "running".

Running a batch again (same id) therefore continues it: tapes that finished are skipped, tapes
still "running" are resumed from their last step (an action that was cut off gets an
"interrupted" observation rather than being performed twice), tasks without a tape start.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tapeagents.agent import Agent
from tapeagents.batch.tasks import (
    Task,
    batch_tag,
    check_tasks,
    default_batch_id,
    tape_id_for,
    task_tape,
)
from tapeagents.environment import Environment
from tapeagents.errors import StoreError, UsageError
from tapeagents.orchestrator import Finished, LLMCallMade, StepAppended, run
from tapeagents.tape import Tape, TapeMetadata

if TYPE_CHECKING:
    from rich.console import Console

    from tapeagents.batch.progress import BatchProgress
    from tapeagents.store import TapeStore

__all__ = ["BatchRun", "BatchSummary", "EnvFactory", "TaskResult", "run_batch", "run_batch_sync"]

T = TypeVar("T")

EnvFactory = Callable[[Task], Environment | None | Awaitable[Environment | None]]
"""Makes the environment of one task (sync or async); the batch closes it after the task."""

RESUMABLE = frozenset({"running", "new"})
"""Statuses of tapes whose run did not finish: a rerun continues them."""


@dataclass(slots=True)
class TaskResult:
    """How one task of a batch went."""

    task_id: str
    tape_id: str
    status: str
    """How the tape's run ended: a `Finished` reason ("stopped", "awaiting_input",
    "no_environment", "max_steps") or "error"."""
    error: str | None = None
    """Why the task failed, when it did."""
    skipped: bool = False
    """The tape had already finished in an earlier run of the batch; it was not run again."""
    resumed: bool = False
    """The tape was continued from where an earlier run stopped."""
    steps: int = 0
    """Steps appended in this run."""
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    """US dollars, for the calls whose price the backend knows."""
    retries: int = 0
    """Transient LLM failures retried during the task."""
    seconds: float = 0.0
    tape: Tape[Any, Any] | None = field(default=None, repr=False)
    """The tape, from `run_batch` with the asyncio backend; None from Ray workers and in
    `run_batch_sync` summaries with a store (the store has the tape)."""

    @property
    def failed(self) -> bool:
        return self.status == "error"


@dataclass
class BatchSummary:
    """All results of a batch run, and the totals a report needs."""

    batch_id: str
    results: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    """The run stopped before every task was done (Ctrl-C, a store failure)."""

    def add(self, result: TaskResult) -> None:
        self.results.append(result)

    @property
    def ran(self) -> list[TaskResult]:
        """Results of the tasks run (started or resumed) in this run."""
        return [r for r in self.results if not r.skipped]

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.failed and not r.skipped)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.results if r.skipped)

    def by_status(self) -> dict[str, int]:
        """How many tasks of this run ended in each status (skipped ones apart)."""
        counts: dict[str, int] = {}
        for result in self.ran:
            counts[result.status] = counts.get(result.status, 0) + 1
        return dict(sorted(counts.items()))

    def total(self, name: str) -> float:
        """Sum of a numeric field (`llm_calls`, `prompt_tokens`, `cost`, ...) over this run."""
        return sum(getattr(r, name) for r in self.ran)


# ----------------------------------------------------------------------------- one process


class BatchRun:
    """What every worker of a batch needs: the agent, the store and how to make environments.

    One process (the asyncio backend) or one Ray worker runs tasks through `run_tasks`.
    """

    def __init__(
        self,
        agent: Agent,
        *,
        batch_id: str,
        store: TapeStore | None,
        env_factory: EnvFactory | None = None,
        env: Environment | None = None,
        make_tape: Callable[[Task], Tape[Any, Any]] = task_tape,
        max_steps: int = 100,
        retry_failed: bool = False,
    ) -> None:
        self.agent = agent
        self.batch_id = batch_id
        self.tag = batch_tag(batch_id)
        self.store = store
        self.env_factory = env_factory
        self.env = env
        self.make_tape = make_tape
        self.max_steps = max_steps
        self.retry_failed = retry_failed

    def tape_id(self, task_id: str) -> str:
        """The id of the task's tape in this batch."""
        return tape_id_for(self.batch_id, task_id)

    async def _store(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call: inline on SQLite (sub-millisecond), in a worker thread otherwise; a
        cancellation waits for a write in progress (like the orchestrator's)."""
        assert self.store is not None
        if self.store.writes_inline:
            return method(*args, **kwargs)
        call = asyncio.ensure_future(asyncio.to_thread(method, *args, **kwargs))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            await asyncio.wait([call])
            raise

    async def stored_statuses(self) -> dict[str, str]:
        """Status of every stored tape of the batch, by tape id."""
        if self.store is None:
            return {}
        found = await self._store(self.store.list, tag=self.tag, limit=None)
        return {summary.id: summary.status for summary in found}

    def is_done(self, status: str | None) -> bool:
        """Whether a tape with this stored status is skipped by a rerun."""
        if status is None or status in RESUMABLE:
            return False
        return not (self.retry_failed and status == "error")

    async def run_tasks(
        self, tasks: list[tuple[str, Task]], concurrency: int
    ) -> AsyncIterator[TaskResult]:
        """Run the tasks, at most `concurrency` at once; yield each result as it is ready.

        A task's failure is its result; a store failure stops everything and is raised.
        """
        statuses = await self.stored_statuses()
        pending: list[tuple[str, Task, str | None]] = []
        for task_id, task in tasks:
            tape_id = self.tape_id(task_id)
            status = statuses.get(tape_id)
            if self.is_done(status):
                assert status is not None
                yield TaskResult(task_id, tape_id, status, skipped=True)
            else:
                pending.append((task_id, task, status))
        if not pending:
            return
        queue: asyncio.Queue[TaskResult | None] = asyncio.Queue()
        todo = iter(pending)

        async def worker() -> None:
            for task_id, task, status in todo:  # each worker takes the next task when free
                queue.put_nowait(await self.run_task(task_id, task, resume=status is not None))

        async def all_workers() -> None:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(pending))):
                    group.create_task(worker())

        runner = asyncio.create_task(all_workers())
        runner.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while (result := await queue.get()) is not None:
                yield result
            await _first_error(runner)
        finally:
            if not runner.done():
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    async def run_task(self, task_id: str, task: Task, *, resume: bool) -> TaskResult:
        """Run (or resume) one task's tape; its failures become the result, not an exception.

        Raises:
            StoreError: The store failed; the batch cannot go on.
        """
        started = time.perf_counter()
        tape_id = self.tape_id(task_id)
        result = TaskResult(task_id, tape_id, "running", resumed=resume)
        tape: Tape[Any, Any] | None = None
        try:
            if resume:
                assert self.store is not None
                tape = await self._store(self.store.get, tape_id)
            else:
                tape = self.make_tape(task)
                tape.id = tape_id
                tape.metadata.task_id = task_id
                if self.tag not in tape.metadata.tags:
                    tape.metadata.tags.append(self.tag)
            result.tape = tape
            env = self.env
            if self.env_factory is not None:
                made = self.env_factory(task)
                env = await made if inspect.isawaitable(made) else made
            try:
                await self._drive(tape, env, result)
            finally:
                if self.env_factory is not None and env is not None:
                    await env.aclose()
        except StoreError:
            raise
        except Exception as error:
            result.status = "error"
            result.error = "".join(traceback.format_exception_only(error)).strip()
            if tape is None:  # make_tape itself failed: keep the task and the error anyway
                tape = Tape(
                    id=tape_id,
                    context=dict(task),
                    metadata=TapeMetadata(task_id=task_id, tags=[self.tag]),
                )
                result.tape = tape
            await self._record_failure(tape, result.error)
        result.seconds = time.perf_counter() - started
        return result

    async def _drive(
        self, tape: Tape[Any, Any], env: Environment | None, result: TaskResult
    ) -> None:
        events = run(
            self.agent, tape, env, max_steps=self.max_steps, store=self.store, write_behind=True
        )
        async for event in events:
            if isinstance(event, StepAppended):
                result.steps += 1
            elif isinstance(event, LLMCallMade):
                call = event.call
                result.llm_calls += 1
                result.prompt_tokens += call.usage.prompt_tokens
                result.completion_tokens += call.usage.completion_tokens
                result.cost += call.cost or 0.0
                result.retries += call.retries
            elif isinstance(event, Finished):
                result.status = event.reason
                if event.reason == "error":
                    result.error = event.error or "the run ended with an error step"
                    await self._record_failure(tape, result.error)

    async def _record_failure(self, tape: Tape[Any, Any], error: str) -> None:
        """Keep the task's error on its tape (metadata.error) with the status "error"."""
        tape.metadata.error = error
        if self.store is None:
            return
        # stores the tape if it failed before its first step, else its status and metadata
        await self.store.asave(tape, status="error", agent=self.agent.name)

    def llms(self) -> list[Any]:
        """Every LLM the agent and its subagents use (wrapped ones too), each once."""
        found: dict[int, Any] = {}
        stack = [self.agent]
        while stack:
            current = stack.pop()
            for llm in current.llms.values():
                found.setdefault(id(llm), llm)
                inner = getattr(llm, "llm", None)  # CachedLLM and other wrappers
                if inner is not None:
                    found.setdefault(id(inner), inner)
            stack.extend(current.subagents.values())
        return list(found.values())

    async def close_llms(self) -> None:
        """Close the connections the agent's LLMs opened in this event loop."""
        for llm in self.llms():
            close = getattr(llm, "aclose", None)
            if close is not None:
                await close()


async def _first_error(task: asyncio.Task[None]) -> None:
    """Await the workers; raise the first real failure out of a TaskGroup's exception group."""
    try:
        await task
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if not isinstance(e, asyncio.CancelledError)]
        raise (errors[0] if errors else group) from None


# ----------------------------------------------------------------------------- the entry point


async def run_batch(
    agent: Agent,
    tasks: Iterable[Task],
    *,
    env_factory: EnvFactory | None = None,
    env: Environment | None = None,
    store: TapeStore | None = None,
    concurrency: int = 16,
    batch_id: str | None = None,
    backend: Literal["asyncio", "ray"] = "asyncio",
    max_steps: int = 100,
    retry_failed: bool = False,
    make_tape: Callable[[Task], Tape[Any, Any]] = task_tape,
    ray_workers: int | None = None,
    chunk_size: int | None = None,
) -> AsyncIterator[TaskResult]:
    """Run `agent` on every task, `concurrency` tapes at a time; yield results as they finish.

    Each task (a dict with an `id` and inputs) becomes a tape: the task as its context, its
    `message` (if any) as the first user message, `metadata.task_id` set and the tag
    `batch:<batch_id>`. A task that raises, or whose run ends in an error, is stored with
    status "error" and its error in `metadata.error`; the batch goes on. A store failure
    stops the batch (`StoreError`, saying how to resume).

    Running again with the same `batch_id` resumes: finished tapes are skipped (reported
    with `skipped=True`), interrupted ones continue from their last step.

    Args:
        agent: The agent; shared by all tasks (its LLMs' rate limits and connections too).
        tasks: Dicts with a unique `id` (string or integer) and the task's inputs.
        env_factory: Makes each task's environment (called with the task; may be async);
            it is closed when the task ends.
        env: One environment shared by every task (not closed), instead of `env_factory`.
        store: Where the tapes go; without one nothing is resumable.
        concurrency: Tapes running at once (per worker with Ray).
        batch_id: Names the batch in the store; by default `<agent>-<hash of the task ids>`,
            so running the same tasks again resumes. Pass a new one to start afresh.
        backend: "asyncio" (this process) or "ray" (Ray workers; extra `ray`).
        max_steps: Step limit of each tape's run.
        retry_failed: Also resume tapes that ended in "error" (otherwise they are skipped).
        make_tape: Turns a task into its first tape (default: `task_tape`).
        ray_workers: Ray only: workers to use (default: the cluster's CPUs).
        chunk_size: Ray only: tasks per Ray task (default: 4 x concurrency).

    Yields:
        A `TaskResult` per task, in the order they finish (skipped tasks first). To stop
        early, close the generator (`async with contextlib.aclosing(run_batch(...))`): the
        running tapes are cut off and keep the status "running", to be resumed later.

    Example:
        >>> async def main():
        ...     async for result in run_batch(agent, [{"id": 1, "message": "Hi"}], store=store):
        ...         print(result.task_id, result.status)
    """
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, not {concurrency}.")
    if env is not None and env_factory is not None:
        raise UsageError("Give env_factory= (one environment per task) or env= (shared), not both.")
    checked = check_tasks(tasks)
    batch_id = batch_id or default_batch_id(agent.name, [task_id for task_id, _ in checked])
    batch = BatchRun(
        agent,
        batch_id=batch_id,
        store=store,
        env_factory=env_factory,
        env=env,
        make_tape=make_tape,
        max_steps=max_steps,
        retry_failed=retry_failed,
    )
    if backend == "ray":
        from tapeagents.batch.ray_backend import run_on_ray

        results = run_on_ray(
            batch, checked, concurrency=concurrency, workers=ray_workers, chunk_size=chunk_size
        )
    elif backend == "asyncio":
        results = batch.run_tasks(checked, concurrency)
    else:
        raise UsageError(f"Unknown batch backend {backend!r}; use 'asyncio' or 'ray'.")
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
    env_factory: EnvFactory | None = None,
    env: Environment | None = None,
    store: TapeStore | None = None,
    concurrency: int = 16,
    batch_id: str | None = None,
    backend: Literal["asyncio", "ray"] = "asyncio",
    max_steps: int = 100,
    retry_failed: bool = False,
    make_tape: Callable[[Task], Tape[Any, Any]] = task_tape,
    ray_workers: int | None = None,
    chunk_size: int | None = None,
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
        >>> summary = run_batch_sync(agent, [{"id": 1, "message": "Hello"}], batch_id="demo")
        >>> summary.by_status()
        {'awaiting_input': 1}
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UsageError(
            "run_batch_sync() cannot be called from a running event loop; use "
            "`async for result in run_batch(...)` instead."
        )
    from rich.console import Console
    from rich.markup import escape

    from tapeagents.batch.progress import BatchProgress, summary_table

    checked = check_tasks(tasks)
    batch_id = batch_id or default_batch_id(agent.name, [task_id for task_id, _ in checked])
    summary = BatchSummary(batch_id)
    console = console or Console(stderr=True)

    async def drain(view: BatchProgress | None) -> None:
        results = run_batch(
            agent,
            [task for _, task in checked],
            env_factory=env_factory,
            env=env,
            store=store,
            concurrency=concurrency,
            batch_id=batch_id,
            backend=backend,
            max_steps=max_steps,
            retry_failed=retry_failed,
            make_tape=make_tape,
            ray_workers=ray_workers,
            chunk_size=chunk_size,
        )
        async for result in results:
            if store is not None:
                result.tape = None  # the store has it; a long batch should not hold them all
            summary.add(result)
            if view is not None:
                view.update(result)

    started = time.perf_counter()
    try:
        if progress:
            with BatchProgress(len(checked), batch_id=batch_id, console=console) as view:
                asyncio.run(drain(view))
        else:
            asyncio.run(drain(None))
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
