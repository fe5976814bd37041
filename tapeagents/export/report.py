"""What an export read, produced, left out and could not reproduce.

A model output the target agent cannot reproduce is a problem (`ExportProblem`): it is reported
with the tape, the step and the reason, and `OnProblem` says what it costs. Outputs left out on
purpose are counted by reason. Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from tapeagents.errors import CorruptTapeError, TapeAgentsError

if TYPE_CHECKING:
    from tapeagents.export.examples import TrainingExample

__all__ = ["ExportError", "ExportProblem", "ExportReport", "OnProblem"]

OnProblem = Literal["skip_tape", "skip_output", "raise"]
"""What a problem costs: the whole tape (default), only that model output, or the export."""


class ExportError(TapeAgentsError):
    """The export was asked to stop at the first problem (`on_problem="raise"`)."""


class ExportProblem(BaseModel):
    """A model output (or a tape) that the target agent cannot reproduce, and why."""

    tape_id: str
    step_index: int | None
    """The first step of the output; None when the whole tape is concerned."""
    reason: str

    def __str__(self) -> str:
        where = f"step {self.step_index}" if self.step_index is not None else "tape"
        return f"tape {self.tape_id}, {where}: {self.reason}"


class ExportReport(BaseModel):
    """What an export read, produced, left out and could not reproduce."""

    tapes: int = 0
    """Tapes read (after the tape filters)."""
    tapes_used: int = 0
    """Tapes that gave at least one example."""
    examples: int = 0
    train: int = 0
    validation: int = 0
    skipped: Counter[str] = Field(default_factory=Counter)
    """Model outputs (or tapes) left out on purpose, by reason."""
    problems: list[ExportProblem] = Field(default_factory=list)
    """What the target agent could not reproduce."""
    unreadable: list[ExportProblem] = Field(default_factory=list)
    """Tapes left out because the store cannot read them (damaged rows), with the reason; the
    export went on with the others."""
    tokens: int = 0
    """Token-level exports: tokens in the written examples."""
    target_tokens: int = 0
    """Token-level exports: tokens with a label (the answers)."""
    truncated: int = 0
    """Token-level exports: examples whose prompt was cut from the left to fit."""
    images_as_notes: int = 0
    """Token-level exports: image parts in the written prompts that the model, which reads
    text only, sees as a note (`IMAGE_NOTE`) instead."""

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] += count

    def unreadable_tape(self, error: CorruptTapeError) -> None:
        """Record a tape that the store cannot read (the export leaves it out and goes on)."""
        problem = ExportProblem(
            tape_id=error.tape_id, step_index=error.step_index, reason=error.reason
        )
        self.unreadable.append(problem)

    def add(self, example: TrainingExample) -> None:
        self.examples += 1
        if example.split == "train":
            self.train += 1
        else:
            self.validation += 1

    def summary(self) -> str:
        """A few lines for people: counts, reasons and the first problems."""
        lines = [
            f"{self.examples} examples ({self.train} train, {self.validation} validation) from "
            f"{self.tapes_used} of {self.tapes} tapes."
        ]
        if self.tokens:
            lines.append(
                f"{self.tokens} tokens, {self.target_tokens} of them labelled; "
                f"{self.truncated} prompts cut from the left."
            )
        if self.images_as_notes:
            lines.append(
                f"{self.images_as_notes} images written as a note: the model reads text only."
            )
        for reason, count in sorted(self.skipped.items(), key=lambda item: -item[1]):
            lines.append(f"left out: {count} × {reason}")
        if self.problems:
            count = len(self.problems)
            lines.append(
                f"{count} problem{'' if count == 1 else 's'} (the target agent cannot reproduce):"
            )
            lines += [f"  {problem}" for problem in self.problems[:10]]
            if len(self.problems) > 10:
                lines.append(f"  ... and {len(self.problems) - 10} more")
        return "\n".join(lines + self.unreadable_lines())

    def unreadable_lines(self) -> list[str]:
        """The lines of `summary` that list the tapes the store cannot read (none if none)."""
        count = len(self.unreadable)
        if not count:
            return []
        lines = [
            f"{count} tape{' was' if count == 1 else 's were'} left out: the store cannot read "
            f"{'it' if count == 1 else 'them'}:"
        ]
        lines += [f"  tape {p.tape_id}: {p.reason}" for p in self.unreadable[:10]]
        if count > 10:
            lines.append(f"  ... and {count - 10} more")
        return lines
