"""The live view of a batch: a rich progress bar while it runs, a summary table at the end."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from tapeagents.batch.results import BatchSummary, TaskResult

__all__ = ["BatchProgress", "summary_table"]


def _tokens(count: float) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    if count >= 1e3:
        return f"{count / 1e3:.1f}k"
    return f"{count:.0f}"


class BatchProgress:
    """A progress bar with done/failed counts, tasks per second, tokens and cost so far.

    Use as a context manager and call `update` with every result.
    """

    def __init__(self, total: int, *, batch_id: str, console: Console | None = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.tokens = 0
        self.cost = 0.0
        self._start = time.monotonic()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[rate]} tasks/s"),
            TextColumn("{task.fields[tokens]} tokens"),
            TextColumn("{task.fields[cost]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            f"batch {batch_id}", total=total, ok=0, failed=0, rate="-", tokens="0", cost=""
        )

    def update(self, result: TaskResult) -> None:
        """Count one finished (or skipped) task."""
        self.done += 1
        if result.skipped:
            self.skipped += 1
        elif result.failed:
            self.failed += 1
        self.tokens += result.prompt_tokens + result.completion_tokens
        self.cost += result.cost
        ran = self.done - self.skipped
        elapsed = max(time.monotonic() - self._start, 1e-9)
        self._progress.update(
            self._task,
            completed=self.done,
            ok=self.done - self.failed,
            failed=self.failed,
            rate=f"{ran / elapsed:.1f}" if ran else "-",
            tokens=_tokens(self.tokens),
            cost=f"${self.cost:.4f}" if self.cost else "",
        )

    def __enter__(self) -> BatchProgress:
        self._start = time.monotonic()
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()


def summary_table(summary: BatchSummary) -> Table:
    """The end-of-batch report: tasks by status, LLM calls, tokens, cost, retries, speed."""
    table = Table(title=f"Batch {summary.batch_id}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    ran = len(summary.ran)
    table.add_row("tasks run", str(ran))
    for status, count in summary.by_status().items():
        style = "red" if status in ("error", "held") else "green"
        table.add_row(f"  {status}", f"[{style}]{count}[/]")
    if summary.skipped:
        table.add_row("already done (skipped)", str(summary.skipped))
    resumed = sum(1 for r in summary.ran if r.resumed)
    if resumed:
        table.add_row("resumed", str(resumed))
    calls = summary.total("llm_calls")
    table.add_row("LLM calls", f"{calls:.0f}")
    table.add_row(
        "tokens (prompt + completion)",
        f"{_tokens(summary.total('prompt_tokens'))} + "
        f"{_tokens(summary.total('completion_tokens'))}",
    )
    cost = summary.total("cost")
    if cost:
        table.add_row("cost", f"${cost:.4f}")
    retries = summary.total("retries")
    if retries:
        table.add_row("LLM retries", f"{retries:.0f}")
    seconds = summary.seconds
    table.add_row("wall time", f"{seconds:.1f} s")
    if seconds > 0 and ran:
        table.add_row("throughput", f"{ran / seconds:.1f} tasks/s, {calls / seconds:.1f} calls/s")
    return table
