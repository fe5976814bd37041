"""What the store hands out besides tapes: a tape's header, its family tree, and annotations."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Annotation", "TapeSummary", "TapeTree"]


class TapeSummary(BaseModel):
    """A tape's header, without its steps: what listings show."""

    id: str
    parent_id: str | None
    fork_index: int | None
    author: str | None
    agent: str | None
    status: str
    created_at: float
    updated_at: float
    length: int
    task_id: str | None = None
    outcome: str | None = None
    reward: float | None = None
    tags: list[str] = Field(default_factory=list)


class TapeTree(BaseModel):
    """A tape and, recursively, the tapes forked from it."""

    tape: TapeSummary
    children: list[TapeTree] = Field(default_factory=list)


class Annotation(BaseModel):
    """A person's rating, label and/or comment on one step, or on the whole tape."""

    id: str
    tape_id: str
    step_index: int | None = None
    """Index of the annotated step; None for the tape as a whole."""
    rating: float | None = None
    label: str | None = None
    comment: str | None = None
    author: str | None = None
    created_at: float
