"""Readable terminal rendering of tapes (rich)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tapeagents.steps import (
    Action,
    Error,
    Observation,
    Step,
    StopStep,
    Thought,
    ToolCall,
    ToolResult,
)
from tapeagents.tape import Tape

__all__ = ["print_tape", "step_style", "step_summary", "tape_table"]

_STYLES = {
    Thought: "cyan",
    Action: "yellow",
    Observation: "green",
    StopStep: "bold magenta",
    Error: "bold red",
}


def step_style(step: Any) -> str:
    """The rich style of a step's family."""
    for family, style in _STYLES.items():
        if isinstance(step, family):
            return style
    return "white"


def step_summary(step: Step) -> str:
    """A step's content in one readable string (a tool call as `name({...})`)."""
    if isinstance(step, ToolCall):
        return f"{step.name}({json.dumps(step.arguments, ensure_ascii=False)})"
    if isinstance(step, ToolResult):
        return step.content
    return step.llm_text()


def tape_table(tape: Tape[Any, Any], *, width: int = 400) -> Table:
    """The tape as a table: index, kind, origin and the step's content."""
    table = Table(title=f"Tape {tape.id}", title_justify="left", show_lines=False, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("kind")
    table.add_column("by", style="dim")
    table.add_column("content", overflow="fold")
    for index, step in enumerate(tape.steps):
        origin = "/".join(filter(None, [step.metadata.agent, step.metadata.node])) or "world"
        text = step_summary(step)
        if len(text) > width:
            text = text[:width] + f"… ({len(text) - width} more characters)"
        style = step_style(step)
        table.add_row(str(index), f"[{style}]{escape(step.kind)}[/]", escape(origin), escape(text))
    return table


def print_tape(tape: Tape[Any, Any], console: Console | None = None) -> None:
    """Print the tape readably to the terminal."""
    (console or Console()).print(tape_table(tape))
