"""What a batch reports: one `TaskResult` per task, gathered in a `BatchSummary`.

Both backends (this process, Ray workers) and the progress view share these types, so they live
apart from the code that runs the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tapeagents.tape import Tape

__all__ = ["BatchSummary", "TaskResult"]


@dataclass(slots=True)
class TaskResult:
    """How one task of a batch went."""

    task_id: str
    tape_id: str
    status: str
    """How the tape's run ended: a `Finished` reason ("stopped", "awaiting_input",
    "no_environment", "max_steps"), "error", or "held" (another live run holds the tape; it
    was left alone, and `error` names that run)."""
    error: str | None = None
    """Why the task failed (or was held), when it did."""
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
        """The task did not run to an end: it failed, or another live run held its tape."""
        return self.status in ("error", "held")


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
        return float(sum(getattr(r, name) for r in self.ran))
