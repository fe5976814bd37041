"""Tasks of a batch: plain dicts with an `id`, checked up front and read from JSONL files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tapeagents.errors import UsageError
from tapeagents.steps import UserMessage
from tapeagents.tape import Tape, TapeMetadata

__all__ = [
    "Task",
    "TaskFile",
    "batch_tag",
    "check_tasks",
    "default_batch_id",
    "read_tasks",
    "task_tape",
    "tape_id_for",
]

Task = Mapping[str, Any]
"""A task: a JSON object with an `id` (string or integer) and its inputs."""


def batch_tag(batch_id: str) -> str:
    """The tag every tape of the batch carries."""
    return f"batch:{batch_id}"


def tape_id_for(batch_id: str, task_id: str) -> str:
    """The id of the tape of `task_id` in the batch: the same on every run, so a rerun finds it
    (and two workers can never make two tapes for one task)."""
    return hashlib.sha256(f"{batch_id}\0{task_id}".encode()).hexdigest()[:32]


def default_batch_id(agent_name: str, task_ids: Iterable[str]) -> str:
    """`<agent>-<hash of the task ids>`: running the same tasks again resumes the same batch."""
    digest = hashlib.sha256("\n".join(task_ids).encode()).hexdigest()[:10]
    return f"{agent_name}-{digest}"


def _task_id(task: Any) -> str | None:
    """The task's id as a string, or None when it has no usable id."""
    if not isinstance(task, Mapping):
        return None
    value = task.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)


def check_tasks(tasks: Iterable[Task]) -> list[tuple[str, Task]]:
    """The tasks with their ids; a task without an id, or an id used twice, is a `UsageError`."""
    checked: list[tuple[str, Task]] = []
    seen: set[str] = set()
    for position, task in enumerate(tasks):
        task_id = _task_id(task)
        if task_id is None:
            raise UsageError(
                f"Task {position} has no 'id' (a non-empty string or integer): {task!r:.200}. "
                "Give every task a unique id; reruns find their tapes by it."
            )
        if task_id in seen:
            raise UsageError(f"Task id {task_id!r} is used twice; task ids must be unique.")
        seen.add(task_id)
        checked.append((task_id, task))
    return checked


def task_tape(task: Task) -> Tape[Any, Any]:
    """The tape a task starts as: the task (id and inputs) as its context, and its `message`,
    if it has a string one, as the first user message."""
    message = task.get("message")
    steps = [UserMessage(content=message)] if isinstance(message, str) else []
    context = {key: value for key, value in task.items()}
    return Tape(context=context, steps=steps, metadata=TapeMetadata())


@dataclass
class TaskFile:
    """What `read_tasks` found: the good tasks and, by line number, the lines it skipped."""

    tasks: list[Task] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)
    """(line number, what is wrong) for every line that is not a usable task."""


def read_tasks(path: str | Path) -> TaskFile:
    """Read a JSONL file of tasks, one JSON object with an `id` a line.

    A line that is not JSON, not an object, has no id or repeats an earlier id is skipped and
    reported with its line number; the other tasks are kept. Blank lines are ignored.

    Raises:
        UsageError: The file cannot be read.
    """
    found = TaskFile()
    seen: dict[str, int] = {}
    try:
        source = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise UsageError(f"Cannot read the task file {path}: {error.strerror or error}.") from None
    with source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
            except ValueError as error:
                found.problems.append((number, f"not valid JSON ({error})"))
                continue
            if not isinstance(task, dict):
                found.problems.append((number, f"not a JSON object but {type(task).__name__}"))
                continue
            task_id = _task_id(task)
            if task_id is None:
                found.problems.append((number, "no 'id' (a non-empty string or integer)"))
                continue
            if task_id in seen:
                found.problems.append(
                    (number, f"id {task_id!r} was already used on line {seen[task_id]}")
                )
                continue
            seen[task_id] = number
            found.tasks.append(task)
    return found
