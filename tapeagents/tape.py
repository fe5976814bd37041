"""Tapes: the typed, append-only record of an agent session, and its resumable state.

A `Tape` is a list of `Step`s plus an id, lineage (parent and fork index), a context and
metadata. Appending is O(1) and in place; `fork` makes a child that shares a prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, SerializeAsAny, field_validator

from tapeagents.errors import UsageError
from tapeagents.steps import Action, Observation, Step, load_step, new_id

__all__ = ["Tape", "TapeMetadata"]


class TapeMetadata(BaseModel):
    """Outcome and labels of a tape.

    `task_id`, `outcome` and `reward` are what evaluation records, batch runs and exporters
    select on; the store keeps them in indexed columns.
    """

    task_id: str | None = None
    """Which task the session worked on (a benchmark task and seed, a row of a task file)."""
    outcome: str | None = None
    """How the task ended, judged by the environment or a scorer: "success", "failure", ..."""
    reward: float | None = None
    """A numeric score of the session, when the task has one."""
    result: Any = None
    """What the session produced (for example the final answer)."""
    error: str | None = None
    """Why the session failed, if it did."""
    tags: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


ContextT = TypeVar("ContextT")
StepT = TypeVar("StepT", bound=Step)


class Tape(BaseModel, Generic[ContextT, StepT]):
    """The record and the state of one agent session.

    Append with `append` (O(1), in place). Steps are immutable; `fork` makes a child tape that
    shares a prefix of the steps. `Tape.model_validate_json` / `model_dump_json` round-trip
    exactly.

    Example:
        >>> tape = Tape(steps=[UserMessage(content="hi")])
        >>> tape.append(AssistantMessage(content="hello"))
        >>> [step.kind for step in tape]
        ['user', 'assistant']
    """

    id: str = Field(default_factory=new_id)
    parent_id: str | None = None
    """The tape this one was forked from."""
    fork_index: int | None = None
    """How many of the parent's steps this tape starts with."""
    author: str | None = None
    """Who made the tape: an agent's name, or a person who edited it."""
    context: ContextT | None = None
    """Task data the agent reads (a question, a form, a web task)."""
    metadata: TapeMetadata = Field(default_factory=TapeMetadata)
    steps: list[SerializeAsAny[StepT]] = Field(default_factory=list)

    @field_validator("steps", mode="before")
    @classmethod
    def _load_steps(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [load_step(item) if isinstance(item, dict) else item for item in value]
        return value

    def append(self, step: StepT) -> None:
        """Add a step at the end, in place."""
        self.steps.append(step)

    def extend(self, steps: Iterable[StepT]) -> None:
        """Add several steps at the end, in place."""
        self.steps.extend(steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[StepT]:  # type: ignore[override]
        return iter(self.steps)

    def __getitem__(self, index: int) -> StepT:
        return self.steps[index]

    @property
    def last(self) -> StepT | None:
        """The last step, or None for an empty tape."""
        return self.steps[-1] if self.steps else None

    def fork(self, at: int | None = None, *, author: str | None = None) -> Tape[ContextT, StepT]:
        """A child tape with this tape's first `at` steps (all by default) and a new id."""
        n = len(self.steps) if at is None else at
        if not 0 <= n <= len(self.steps):
            raise UsageError(f"Cannot fork at step {n}: the tape has {len(self.steps)} steps.")
        return self.model_copy(
            update={
                "id": new_id(),
                "parent_id": self.id,
                "fork_index": n,
                "author": author or self.author,
                "metadata": TapeMetadata(tags=list(self.metadata.tags)),
                "steps": self.steps[:n],
            }
        )

    def pending_actions(self) -> list[Action]:
        """Actions of the last agent turn that have no observation yet, oldest first.

        An observation answers the action whose id it names; an observation that names none (a
        user message) answers the `awaits_input` actions before it. Only the last turn is
        scanned, so the cost does not grow with the tape.
        """
        answered: set[str] = set()
        input_seen = False
        seen_agent_step = False
        pending: list[Action] = []
        for step in reversed(self.steps):
            if isinstance(step, Observation):
                if seen_agent_step:
                    break
                if step.action_id is None:
                    input_seen = True
                else:
                    answered.add(step.action_id)
            else:
                seen_agent_step = True
                if isinstance(step, Action) and step.metadata.id not in answered:
                    if not (step.awaits_input and input_seen):
                        pending.append(step)
        pending.reverse()
        return pending

    def kinds(self) -> list[str]:
        """The kinds of all steps, in order (handy in tests and logs)."""
        return [step.kind for step in self.steps]

    def steps_of(self, *types: type[Step]) -> Sequence[Step]:
        """The steps that are instances of any of `types`."""
        return [step for step in self.steps if isinstance(step, types)]
