"""Terminal rendering for the commands: tape listings, headers, steps with their LLM calls.

Step colours and one-line summaries come from `tapeagents.display`, so `print_tape` and the
CLI show steps the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from tapeagents.cli.common import local_time, short
from tapeagents.display import step_style, step_summary
from tapeagents.llms import LLMCall
from tapeagents.steps import Step
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeSummary

__all__ = ["call_line", "header_table", "list_table", "step_line", "steps_table"]

STEP_WIDTH = 400
"""Characters of a step's content shown unless `--full` is given."""


def list_table(summaries: Sequence[TapeSummary]) -> Table:
    """The tapes of `tapeagents ls`, one row each."""
    table = Table(show_lines=False, expand=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("agent")
    table.add_column("status")
    table.add_column("steps", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("tags")
    table.add_column("parent", no_wrap=True, style="dim")
    for s in summaries:
        parent = f"{short(s.parent_id)}@{s.fork_index}" if s.parent_id else ""
        table.add_row(
            short(s.id),
            escape(s.agent or ""),
            f"[{_status_style(s.status)}]{escape(s.status)}[/]",
            str(s.length),
            local_time(s.created_at),
            escape(", ".join(s.tags)),
            parent,
        )
    return table


def _status_style(status: str) -> str:
    return {
        "stopped": "green",
        "awaiting_input": "cyan",
        "running": "yellow",
        "error": "bold red",
        "max_steps": "yellow",
        "no_environment": "yellow",
    }.get(status, "white")


def header_table(
    summary: TapeSummary,
    tape: Tape[Any, Any],
    *,
    ancestors: Sequence[TapeSummary],
    children: Sequence[TapeSummary],
    full: bool,
) -> Table:
    """The tape's header: who made it, how it ended, its lineage, its result."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("tape", f"[bold]{summary.id}[/]")
    grid.add_row("agent", escape(summary.agent or "-"))
    if summary.author and summary.author != summary.agent:
        grid.add_row("author", escape(summary.author))
    grid.add_row("status", f"[{_status_style(summary.status)}]{escape(summary.status)}[/]")
    grid.add_row("steps", str(summary.length))
    grid.add_row("created", local_time(summary.created_at))
    grid.add_row("updated", local_time(summary.updated_at))
    if summary.tags:
        grid.add_row("tags", escape(", ".join(summary.tags)))
    if ancestors:
        chain = " ← ".join(f"{short(a.id)}" for a in ancestors)
        grid.add_row(
            "parent",
            f"{short(summary.parent_id)} at step {summary.fork_index}"
            + (f"  (lineage: {chain})" if len(ancestors) > 1 else ""),
        )
    elif summary.parent_id:
        grid.add_row("parent", f"{short(summary.parent_id)} (not in this store)")
    if children:
        forks = ", ".join(f"{short(c.id)} at step {c.fork_index}" for c in children)
        grid.add_row("children", forks)
    limit = None if full else 200
    if tape.context is not None:
        grid.add_row("context", escape(_clip(_json(tape.context), limit)))
    if tape.metadata.result is not None:
        grid.add_row("result", escape(_clip(_json(tape.metadata.result), limit)))
    if tape.metadata.error:
        grid.add_row("error", f"[red]{escape(_clip(tape.metadata.error, limit))}[/]")
    return grid


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _clip(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"


def _cells(index: int, step: Step, width: int | None) -> tuple[str, str, str, str]:
    origin = "/".join(filter(None, [step.metadata.agent, step.metadata.node])) or "world"
    style = step_style(step)
    return (
        str(index),
        f"[{style}]{escape(step.kind)}[/]",
        escape(origin),
        escape(_clip(step_summary(step), width)),
    )


def call_line(call: LLMCall) -> str:
    """One LLM call: model, tokens, cost, latency."""
    usage = call.output.usage
    cost = f"${call.output.cost:.4f}" if call.output.cost is not None else "cost unknown"
    return (
        f"llm call {call.id[:8]} · {escape(call.model)} · {usage.prompt_tokens} prompt + "
        f"{usage.completion_tokens} completion tokens · {cost} · {call.latency:.2f} s"
    )


def steps_table(
    tape: Tape[Any, Any],
    *,
    width: int | None = STEP_WIDTH,
    calls: Mapping[str, LLMCall] | None = None,
) -> Table:
    """The tape's steps; with `calls`, each LLM call is shown under the steps it produced."""
    table = Table(expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("kind")
    table.add_column("by", style="dim")
    table.add_column("content", overflow="fold")
    steps = tape.steps
    for index, step in enumerate(steps):
        table.add_row(*_cells(index, step, width))
        if calls is None:
            continue
        call_id = step.metadata.llm_call_id
        following = steps[index + 1].metadata.llm_call_id if index + 1 < len(steps) else None
        if call_id and call_id != following:
            call = calls.get(call_id)
            text = call_line(call) if call else f"llm call {call_id[:8]} (not in the store)"
            table.add_row("", "", "", f"[dim]↳ {text}[/]")
    return table


def step_line(index: int, step: Step, width: int | None = STEP_WIDTH) -> Table:
    """One step as a borderless row with fixed columns, for printing steps as they come."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", width=4, style="dim")
    grid.add_column(width=16, no_wrap=True)
    grid.add_column(width=16, no_wrap=True, style="dim")
    grid.add_column(overflow="fold")
    grid.add_row(*_cells(index, step, width))
    return grid


def totals(calls: Sequence[LLMCall]) -> str:
    """Calls, tokens and cost of a run, in one phrase."""
    tokens = sum(c.output.usage.total_tokens for c in calls)
    costs = [c.output.cost for c in calls if c.output.cost is not None]
    cost = f", ${sum(costs):.4f}" if costs else ""
    plural = "" if len(calls) == 1 else "s"
    return f"{len(calls)} LLM call{plural}, {tokens} tokens{cost}"
