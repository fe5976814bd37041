"""`BatchOptions`: how a batch runs, given once and shared by `run_batch` and `run_batch_sync`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from tapeagents.batch.tasks import Task, task_tape
from tapeagents.errors import UsageError
from tapeagents.tape import Tape

__all__ = ["BACKENDS", "BatchOptions"]

BACKENDS = ("asyncio", "ray")
"""Where a batch can run: this process's event loop, or Ray workers."""


@dataclass(frozen=True, kw_only=True)
class BatchOptions:
    """How to run a batch: concurrency, the batch's id, the backend and the limits of each tape.

    What the batch runs on (the agent, the tasks, the store, the environments) is passed to
    `run_batch` itself; these are the settings around it, checked when they are made.

    Example:
        >>> options = BatchOptions(concurrency=64, batch_id="eval-1")
        >>> summary = run_batch_sync(agent, tasks, store=store, options=options)
    """

    concurrency: int = 16
    """Tapes running at once (per worker with Ray)."""
    batch_id: str | None = None
    """Names the batch in the store; by default `<agent>-<hash of the task ids>`, so running the
    same tasks again resumes. Pass a new one to start afresh."""
    backend: Literal["asyncio", "ray"] = "asyncio"
    """"asyncio" (this process) or "ray" (Ray workers; extra `ray`)."""
    max_steps: int = 100
    """Step limit of each tape's run."""
    retry_failed: bool = False
    """Also resume tapes that ended in "error" (otherwise a rerun skips them)."""
    make_tape: Callable[[Task], Tape[Any, Any]] = task_tape
    """Turns a task into its first tape (default: `task_tape`)."""
    ray_workers: int | None = None
    """Ray only: workers to use (default: the cluster's CPUs)."""
    chunk_size: int | None = None
    """Ray only: tasks per Ray task (default: 4 x concurrency)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, not {self.concurrency}.")
        if self.backend not in BACKENDS:
            raise UsageError(f"Unknown batch backend {self.backend!r}; use 'asyncio' or 'ray'.")
        if self.max_steps < 1:
            raise UsageError(f"max_steps must be at least 1, not {self.max_steps}.")
        for name in ("ray_workers", "chunk_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1 (or None for the default).")
