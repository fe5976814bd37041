"""Tapes in the terminal (rich): `print_tape`, and the tables of `tapeagents ls`, `show` and `run`.

Everything a tape carries (step content, kinds, agent names, tags, results) can come from a
model, a web page or another person's store, so it passes through `strip_controls` before it is
printed: a hostile tape cannot move the cursor, clear the screen or retitle the terminal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, assert_never

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tapeagents.render.classify import Family, step_family, step_origin, step_summary
from tapeagents.render.formats import clip, local_time, short_id

if TYPE_CHECKING:
    from tapeagents.llms.base import LLMCall
    from tapeagents.steps import Step
    from tapeagents.store import TapeSummary
    from tapeagents.store.leases import LeaseHolder
    from tapeagents.tape import Tape

__all__ = [
    "STEP_WIDTH",
    "call_line",
    "family_style",
    "header_table",
    "json_text",
    "list_table",
    "print_tape",
    "status_style",
    "step_line",
    "steps_table",
    "strip_controls",
    "totals",
]

STEP_WIDTH = 400
"""Characters of a step's content shown unless the whole step is asked for (`--full`)."""

_CONTROLS = re.compile(
    r"""
      (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]                     # CSI: cursor moves, colours, erasing
    | (?:\x1b[]PX^_]|[\x90\x98\x9d-\x9f])                  # OSC, DCS, SOS, PM, APC (titles,
      [^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)                  # links) up to their terminator
    | \x1b[ -/]*[0-~]?                                      # any other escape, or a lone ESC
    | [\x00-\x08\x0b-\x1f\x7f-\x9f]                         # C0, C1 controls but tab, newline
    """,
    re.VERBOSE,
)


def strip_controls(text: str) -> str:
    """The text without terminal control sequences (ANSI and OSC escapes) or control characters.

    Newlines and tabs stay; a carriage return is dropped, since it could overwrite a line.
    """
    return _CONTROLS.sub("", text.replace("\r\n", "\n"))


_CONTROL_ESCAPES = {code: f"\\u{code:04x}" for code in range(0x7F, 0xA0)}
"""DEL and the C1 controls, which JSON leaves as they are, as JSON escapes."""


def json_text(value: Any) -> str:
    """`value` as indented JSON to print: other scripts stay readable, and every control
    character is escaped (JSON escapes C0 controls itself; DEL and C1 controls are escaped here)."""
    return json.dumps(value, ensure_ascii=False, indent=2).translate(_CONTROL_ESCAPES)


def _safe(text: str) -> str:
    """Text from a tape, ready for rich markup: no control sequences, no markup of its own."""
    return escape(strip_controls(text))


def family_style(family: Family) -> str:
    """The rich style of a step family."""
    match family:
        case Family.USER:
            return "bold blue"
        case Family.THOUGHT:
            return "cyan"
        case Family.ACTION:
            return "yellow"
        case Family.OBSERVATION:
            return "green"
        case Family.STOP:
            return "bold magenta"
        case Family.ERROR:
            return "bold red"
        case Family.UNKNOWN:
            return "white"
        case _:
            assert_never(family)


def status_style(status: str) -> str:
    """The rich style of a tape status."""
    return {
        "stopped": "green",
        "awaiting_input": "cyan",
        "running": "yellow",
        "error": "bold red",
        "max_steps": "yellow",
        "no_environment": "yellow",
    }.get(status, "white")


def _status(status: str, holder: LeaseHolder | None = None, *, known: bool = False) -> str:
    """The status; a "running" tape says whether a live run holds it (when `known`)."""
    text = status
    if status == "running" and known:
        text = f"running (live: pid {holder.pid} on {holder.host})" if holder else "interrupted"
    return f"[{status_style(status)}]{_safe(text)}[/]"


def list_table(
    summaries: Sequence[TapeSummary], holders: Mapping[str, LeaseHolder] | None = None
) -> Table:
    """The tapes of `tapeagents ls`, one row each; with `holders` (live leases by tape id), a
    "running" tape shows whether its run is alive or was interrupted."""
    table = Table(show_lines=False, expand=False)
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("agent")
    table.add_column("status")
    table.add_column("steps", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("tags")
    table.add_column("parent", no_wrap=True, style="dim")
    for s in summaries:
        parent = f"{short_id(s.parent_id)}@{s.fork_index}" if s.parent_id else ""
        table.add_row(
            _safe(short_id(s.id)),
            _safe(s.agent or ""),
            _status(s.status, (holders or {}).get(s.id), known=holders is not None),
            str(s.length),
            local_time(s.created_at),
            _safe(", ".join(s.tags)),
            _safe(parent),
        )
    return table


def header_table(
    summary: TapeSummary,
    tape: Tape[Any, Any],
    *,
    ancestors: Sequence[TapeSummary],
    children: Sequence[TapeSummary],
    full: bool,
    holders: Mapping[str, LeaseHolder] | None = None,
) -> Table:
    """The tape's header for `tapeagents show`: who made it, how it ended, its lineage, result
    (with `holders`, whether a "running" tape's run is alive)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("tape", f"[bold]{_safe(summary.id)}[/]")
    grid.add_row("agent", _safe(summary.agent or "-"))
    if summary.author and summary.author != summary.agent:
        grid.add_row("author", _safe(summary.author))
    holder = (holders or {}).get(summary.id)
    grid.add_row("status", _status(summary.status, holder, known=holders is not None))
    grid.add_row("steps", str(summary.length))
    grid.add_row("created", local_time(summary.created_at))
    grid.add_row("updated", local_time(summary.updated_at))
    if summary.tags:
        grid.add_row("tags", _safe(", ".join(summary.tags)))
    if ancestors:
        chain = " ← ".join(short_id(a.id) for a in ancestors)
        lineage = f"  (lineage: {chain})" if len(ancestors) > 1 else ""
        grid.add_row(
            "parent", _safe(f"{short_id(summary.parent_id)} at step {summary.fork_index}{lineage}")
        )
    elif summary.parent_id:
        grid.add_row("parent", _safe(f"{short_id(summary.parent_id)} (not in this store)"))
    if children:
        forks = ", ".join(f"{short_id(c.id)} at step {c.fork_index}" for c in children)
        grid.add_row("children", _safe(forks))
    limit = None if full else 200
    if tape.context is not None:
        grid.add_row("context", _safe(clip(_json(tape.context), limit)))
    if tape.metadata.result is not None:
        grid.add_row("result", _safe(clip(_json(tape.metadata.result), limit)))
    if tape.metadata.error:
        grid.add_row("error", f"[red]{_safe(clip(tape.metadata.error, limit))}[/]")
    return grid


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _cells(index: int, step: Step, width: int | None) -> tuple[str, str, str, str]:
    style = family_style(step_family(step))
    return (
        str(index),
        f"[{style}]{_safe(step.kind)}[/]",
        _safe(step_origin(step)),
        _safe(clip(step_summary(step), width)),
    )


def call_line(call: LLMCall) -> str:
    """One LLM call: model, tokens, cost, latency."""
    usage = call.output.usage
    cost = f"${call.output.cost:.4f}" if call.output.cost is not None else "cost unknown"
    return (
        f"llm call {_safe(call.id[:8])} · {_safe(call.model)} · {usage.prompt_tokens} prompt + "
        f"{usage.completion_tokens} completion tokens · {cost} · {call.latency:.2f} s"
    )


def steps_table(
    tape: Tape[Any, Any],
    *,
    width: int | None = STEP_WIDTH,
    calls: Mapping[str, LLMCall] | None = None,
    title: str | None = None,
) -> Table:
    """The tape's steps; with `calls`, each LLM call is shown under the steps it produced."""
    table = Table(title=title and _safe(title), title_justify="left", expand=False)
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
            text = call_line(call) if call else f"llm call {_safe(call_id[:8])} (not in the store)"
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


def print_tape(
    tape: Tape[Any, Any],
    *,
    console: Console | None = None,
    width: int | None = STEP_WIDTH,
    calls: Mapping[str, LLMCall] | None = None,
) -> None:
    """Print the tape's steps as a table, the way `tapeagents show` does.

    Args:
        tape: The tape to print.
        console: Where to print; a new console on stdout by default.
        width: Characters of each step's content to show; None shows every step whole.
        calls: LLM calls by id, to show each call (model, tokens, cost) under its steps.
    """
    table = steps_table(tape, width=width, calls=calls, title=f"Tape {tape.id}")
    (console or Console()).print(table)
