"""The Ray backend: chunks of a batch run on Ray workers, each chunk on its own asyncio loop.

Every worker opens the same store by URL (PostgreSQL across machines; a SQLite file works on
one machine) and runs its chunk exactly as the asyncio backend would. A worker that dies takes
its chunk with it; Ray runs the chunk again elsewhere, and because tapes are found by their
deterministic ids, the second attempt skips the tapes the first one finished and resumes the
one it was in the middle of. Rate limits are split evenly between the workers.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapeagents.batch.results import TaskResult
from tapeagents.batch.runner import BatchRun, unique_by_identity
from tapeagents.batch.tasks import Task
from tapeagents.errors import StoreError, UsageError

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = ["run_on_ray"]

_MAX_RETRIES = 3
"""Times Ray runs a chunk again after its worker died."""

_stores: dict[str, TapeStore] = {}
"""One store per URL and worker process, reused by the chunks it runs."""


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports over the network
    try:
        import ray
    except ImportError as error:
        raise UsageError(
            f"The Ray backend needs ray ({error}). Install it with: pip install 'tapeagents[ray]'"
        ) from None
    return ray


def _worker_store(url: str) -> TapeStore:
    from tapeagents.store import TapeStore

    store = _stores.get(url)
    if store is None:
        store = _stores[url] = TapeStore(url, upgrade=False)
    return store


def _share_rate_limits(batch: BatchRun, workers: int) -> None:
    """Give this worker its share of every rate limit (limits that were one object stay one)."""
    gates = [gate for llm in batch.llms() if (gate := getattr(llm, "gate", None)) is not None]
    limited = [gate for gate in gates if getattr(gate, "rate_limit", None) is not None]
    for limit in unique_by_identity([gate.rate_limit for gate in limited]):
        share = limit.share(workers)
        for gate in limited:
            if gate.rate_limit is limit:
                gate.rate_limit = share


def _run_chunk(
    batch: BatchRun,
    store_url: str | None,
    tasks: list[tuple[str, Task]],
    workers: int,
) -> list[TaskResult]:
    """Body of the Ray task: run a chunk on a fresh event loop, return its results."""
    batch.store = _worker_store(store_url) if store_url else None
    _share_rate_limits(batch, workers)

    async def collect() -> list[TaskResult]:
        results = []
        try:
            async for result in batch.run_tasks(tasks, batch.options.concurrency):
                result.tape = None  # the tape is in the store; do not send it back
                results.append(result)
        finally:
            await batch.close_llms()
        return results

    return asyncio.run(collect())


async def run_on_ray(batch: BatchRun, tasks: list[tuple[str, Task]]) -> AsyncIterator[TaskResult]:
    """Run the batch's tasks on Ray; yield results as chunks finish (skipped tasks first).

    Starts a local Ray instance (no dashboard) unless `ray.init` was called already. The
    batch's options give the concurrency per worker, the workers and the chunk size.
    """
    options = batch.options
    ray = _import_ray()
    store = batch.store
    store_url = store.url if store is not None else None
    if store is not None and store.engine.url.get_backend_name() == "sqlite":
        database = store.engine.url.database
        if database in (None, "", ":memory:"):
            raise UsageError(
                "The Ray backend needs a store every worker can open: PostgreSQL "
                "(postgresql+psycopg://...) or, on one machine, a SQLite file; not :memory:."
            )
        # workers may start elsewhere: give them the file's absolute path
        store_url = f"sqlite:///{Path(database).expanduser().resolve()}"
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    workers = options.ray_workers or max(int(ray.cluster_resources().get("CPU", 1)), 1)

    statuses = await batch.stored_statuses()
    todo: list[tuple[str, Task]] = []
    for task_id, task in tasks:
        status = statuses.get(batch.tape_id(task_id))
        if batch.is_done(status):
            assert status is not None
            yield TaskResult(task_id, batch.tape_id(task_id), status, skipped=True)
        else:
            todo.append((task_id, task))
    if not todo:
        return
    size = options.chunk_size or max(4 * options.concurrency, 1)
    size = min(size, math.ceil(len(todo) / workers))  # every worker gets work
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]

    remote = ray.remote(num_cpus=1, max_retries=_MAX_RETRIES, retry_exceptions=False)(_run_chunk)
    store_ref, batch.store = batch.store, None  # the store (an engine) stays here
    try:
        batch_ref = ray.put(batch)
    finally:
        batch.store = store_ref
    pending = {
        asyncio.wrap_future(ref.future()): ref
        for ref in (remote.remote(batch_ref, store_url, chunk, workers) for chunk in chunks)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                del pending[future]
                try:
                    results = future.result()
                except ray.exceptions.RayTaskError as error:
                    cause = getattr(error, "cause", None)
                    if isinstance(cause, StoreError):
                        raise StoreError(str(cause)) from None
                    raise
                for result in results:
                    yield result
    finally:
        for ref in pending.values():
            ray.cancel(ref, force=True)
