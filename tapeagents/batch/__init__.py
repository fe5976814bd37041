"""Batch runs: one agent on thousands of tasks, concurrently, resumably, into one tape store.

`run_batch` (async, yields results as they finish) and `run_batch_sync` (blocking, with an
optional progress bar) run on asyncio in this process, or on Ray workers (`backend="ray"`,
extra `ray`) that all write to one PostgreSQL store; `BatchOptions` says how. `read_tasks`
reads a JSONL task file.

Modules, from the bottom up: `tasks` (tasks and their tapes), `options`, `results`, `runner`
(one event loop's worth of tasks), `ray_backend` (chunks on Ray workers), `progress` (the live
view) and `api` (the entry points, which choose the backend).
"""

from tapeagents.batch.api import run_batch, run_batch_sync
from tapeagents.batch.options import BatchOptions
from tapeagents.batch.progress import BatchProgress, summary_table
from tapeagents.batch.results import BatchSummary, TaskResult
from tapeagents.batch.runner import BatchRun, EnvFactory
from tapeagents.batch.tasks import (
    Task,
    TaskFile,
    batch_tag,
    default_batch_id,
    read_tasks,
    tape_id_for,
    task_tape,
)

__all__ = [
    "BatchOptions",
    "BatchProgress",
    "BatchRun",
    "BatchSummary",
    "EnvFactory",
    "Task",
    "TaskFile",
    "TaskResult",
    "batch_tag",
    "default_batch_id",
    "read_tasks",
    "run_batch",
    "run_batch_sync",
    "summary_table",
    "tape_id_for",
    "task_tape",
]
