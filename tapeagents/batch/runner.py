"""Runs the tasks of a batch in one event loop: `BatchRun`, what every worker of a batch needs.

Each task becomes a tape whose id is derived from the batch id and the task id, tagged
`batch:<id>`, with the task id in `tape.metadata.task_id` (an indexed column of the store) and
the task in `tape.context`. Every tape runs through `tapeagents.run(..., store=store)`, so each
step is stored as it happens and a tape that was cut off keeps the status "running".

Running a batch again (same id) therefore continues it: tapes that finished are skipped, tapes
still "running" are resumed from their last step (an action that was cut off gets an
"interrupted" observation rather than being performed twice), tasks without a tape start.
A tape that a live run still holds (`tapeagents.store.leases`: another process runs the same
batch) is left alone and reported with the status "held"; a killed worker's lease lapses, and
the batch waits for that once before resuming the tape.
The batch API (`tapeagents.batch.api`) makes a `BatchRun` and hands it to a backend: this
process (`BatchRun.run_tasks`) or Ray workers (`tapeagents.batch.ray_backend`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from tapeagents.agent import Agent
from tapeagents.batch.options import BatchOptions
from tapeagents.batch.results import TaskResult
from tapeagents.batch.tasks import Task, batch_tag, tape_id_for
from tapeagents.environment import Environment
from tapeagents.errors import LeaseHeld, StoreError
from tapeagents.orchestrator import Finished, LLMCallMade, StepAppended, run
from tapeagents.tape import Tape, TapeMetadata

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["RESUMABLE", "BatchRun", "EnvFactory", "unique_by_identity"]

T = TypeVar("T")

EnvFactory = Callable[[Task], Environment | None | Awaitable[Environment | None]]
"""Makes the environment of one task (sync or async); the batch closes it after the task."""

RESUMABLE = frozenset({"running", "new"})
"""Statuses of tapes whose run did not finish: a rerun continues them."""


def unique_by_identity(items: Iterable[T]) -> list[T]:
    """The items in their order, each object once. Objects are compared by identity, not
    equality: two LLM backends that compare equal still hold their own connections and limits."""
    seen: dict[int, T] = {}  # holds every item, so no id is reused while it is looked at
    for item in items:
        seen.setdefault(id(item), item)
    return list(seen.values())


class BatchRun:
    """What every worker of a batch needs: the agent, the store, how to make environments and
    the batch's options.

    One process (the asyncio backend) or one Ray worker runs tasks through `run_tasks`.
    `batch_id` is the batch's resolved id (the options' one, or the default from the tasks).
    """

    def __init__(
        self,
        agent: Agent,
        *,
        batch_id: str,
        store: TapeStore | None,
        env_factory: EnvFactory | None = None,
        env: Environment | None = None,
        options: BatchOptions | None = None,
    ) -> None:
        self.agent = agent
        self.batch_id = batch_id
        self.tag = batch_tag(batch_id)
        self.store = store
        self.env_factory = env_factory
        self.env = env
        self.options = options or BatchOptions()

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
        from tapeagents.store import TapeFilter

        found = await self._store(self.store.list, TapeFilter(tag=self.tag), limit=None)
        return {summary.id: summary.status for summary in found}

    def is_done(self, status: str | None) -> bool:
        """Whether a tape with this stored status is skipped by a rerun."""
        if status is None or status in RESUMABLE:
            return False
        return not (self.options.retry_failed and status == "error")

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
                tape = self.options.make_tape(task)
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
                await self._drive_when_free(tape, env, result)
            finally:
                if self.env_factory is not None and env is not None:
                    await env.aclose()
        except LeaseHeld as error:  # another live run has the tape: leave it to that run
            result.status, result.error = "held", str(error)
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

    async def _drive_when_free(
        self, tape: Tape[Any, Any], env: Environment | None, result: TaskResult
    ) -> None:
        """Run the tape; if another run holds it, wait once for that lease to lapse (a worker
        that was killed), then try again (`LeaseHeld` if the holder renewed it: it is alive)."""
        try:
            await self._drive(tape, env, result)
        except LeaseHeld as held:
            if result.steps or result.llm_calls:  # it ran, and another run took the tape over
                raise
            await asyncio.sleep(held.expires_in + 0.05)
            await self._drive(tape, env, result)

    async def _drive(
        self, tape: Tape[Any, Any], env: Environment | None, result: TaskResult
    ) -> None:
        events = run(
            self.agent,
            tape,
            env,
            max_steps=self.options.max_steps,
            store=self.store,
            write_behind=True,
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

        def walk() -> Iterator[Any]:
            stack = [self.agent]
            while stack:
                current = stack.pop()
                for llm in current.llms.values():
                    yield llm
                    inner = getattr(llm, "llm", None)  # CachedLLM and other wrappers
                    if inner is not None:
                        yield inner
                stack.extend(current.subagents.values())

        return unique_by_identity(walk())

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
