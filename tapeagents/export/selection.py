"""Which tapes and steps become training data: filters, annotations and the train/validation split.

A `Selection` names the tapes (by store columns: agent, status, tag, task, outcome, reward) and
the annotations that keep or drop them or single model outputs. The split is a seeded hash of a
group key (the task, or the tape's lineage), so a task never lands on both sides, and a tape
keeps its side when more tapes are exported later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tapeagents.errors import CorruptTapeError, UsageError
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import Annotation, TapeFilter, TapeStore, TapeSummary

__all__ = [
    "NO_NOTES",
    "Selected",
    "Selection",
    "Split",
    "SplitBy",
    "TapeNotes",
    "select_tapes",
    "split_of",
    "stored_choices",
]

SplitBy = Literal["task", "tape"]
"""What the train/validation split keeps together: all tapes of a task, or one tape's lineage."""

Split = Literal["train", "validation"]
"""The side of the train/validation split a tape (and its examples) is on."""

_BATCH = 200


class Selection(BaseModel):
    """Which tapes, and which model outputs in them, to export.

    Tape filters (all must hold) match the store's columns; annotation filters use what people
    recorded in the studio (`TapeStore.annotate`). A model output (a group of steps from one LLM
    call) is judged by the annotations of its steps, else by those of its tape.

    Example:
        >>> Selection(outcome="success", min_reward=0.5, drop_labels=["bad"])
        Selection(outcome='success', min_reward=0.5, drop_labels=['bad'])
    """

    model_config = ConfigDict(extra="forbid")

    tape_ids: list[str] | None = None
    """Only these tapes (full ids), in this order."""
    agent: str | None = None
    """Only tapes run by this agent (the store's `agent` column)."""
    status: str | None = None
    """Only tapes whose last run ended so (`stopped`, `error`, ...)."""
    tag: str | None = None
    """Only tapes with this tag."""
    task_id: str | None = None
    """Only tapes of this task."""
    outcome: str | None = None
    """Only tapes with this outcome (for example "success")."""
    min_reward: float | None = None
    """Only tapes with a reward of at least this (tapes without a reward are left out)."""
    min_rating: float | None = None
    """Leave out model outputs (and tapes) whose latest rating is below this."""
    drop_labels: list[str] = Field(default_factory=list)
    """Leave out model outputs labelled with any of these, and whole tapes labelled so."""
    keep_labels: list[str] = Field(default_factory=list)
    """When set, keep only model outputs labelled (or whose tape is labelled) with one of these."""
    rated_only: bool = False
    """Keep only model outputs rated at least `min_rating` (on a step, else on the tape)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude_defaults=True).items())
        return f"Selection({fields})"

    @property
    def uses_annotations(self) -> bool:
        return bool(
            self.min_rating is not None or self.drop_labels or self.keep_labels or self.rated_only
        )

    def check(self) -> None:
        """Raise a `UsageError` for a combination that cannot select anything sensible."""
        if self.rated_only and self.min_rating is None:
            raise UsageError("rated_only needs min_rating: say which rating counts as good.")
        clash = set(self.drop_labels) & set(self.keep_labels)
        if clash:
            raise UsageError(f"Labels {sorted(clash)} are both kept and dropped; pick one.")

    def tape_filter(self) -> TapeFilter:
        """The store's filter for the tape filters that are store columns (not the reward)."""
        from tapeagents.store import TapeFilter

        return TapeFilter(
            agent=self.agent,
            status=self.status,
            tag=self.tag,
            task_id=self.task_id,
            outcome=self.outcome,
        )

    def matches(self, summary: TapeSummary) -> bool:
        """Whether a stored tape passes the tape filters."""
        return self.tape_filter().matches(summary) and self._reward_ok(summary.reward)

    def matches_tape(self, tape: Tape[Any, Any], agent: str | None) -> bool:
        """Whether an in-memory tape passes the tape filters (`status` needs a store)."""
        if self.status is not None:
            raise UsageError("Selecting by status needs stored tapes: pass the TapeStore.")
        meta = tape.metadata
        checks = [
            (self.agent, agent),
            (self.task_id, meta.task_id),
            (self.outcome, meta.outcome),
        ]
        if any(wanted is not None and wanted != value for wanted, value in checks):
            return False
        if self.tag is not None and self.tag not in meta.tags:
            return False
        return self._reward_ok(meta.reward)

    def _reward_ok(self, reward: float | None) -> bool:
        return self.min_reward is None or (reward is not None and reward >= self.min_reward)

    # ------------------------------------------------------------------ annotations

    def verdict(self, notes: TapeNotes, start: int, stop: int) -> str | None:
        """Why the model output at steps [start, stop) is left out, or None to keep it."""
        step_notes = [note for i in range(start, stop) for note in notes.steps.get(i, ())]
        for note in (*step_notes, *notes.tape):
            if note.label and note.label in self.drop_labels:
                where = "step" if note.step_index is not None else "tape"
                return f"{where} labelled {note.label!r}"
        rating = _latest_rating(step_notes)
        if rating is None:
            rating = _latest_rating(notes.tape)
        if self.min_rating is not None and rating is not None and rating < self.min_rating:
            return f"rated below {self.min_rating:g}"
        if self.rated_only and rating is None:
            return "not rated"
        if self.keep_labels and not any(
            note.label in self.keep_labels for note in (*step_notes, *notes.tape)
        ):
            return f"not labelled {' or '.join(map(repr, self.keep_labels))}"
        return None


@dataclass
class TapeNotes:
    """A tape's annotations, split into tape-level and per-step ones."""

    tape: list[Annotation] = field(default_factory=list)
    steps: dict[int, list[Annotation]] = field(default_factory=dict)

    @classmethod
    def of(cls, annotations: Iterable[Annotation]) -> TapeNotes:
        """A tape's annotations, sorted into tape-level and per-step notes."""
        notes = cls()
        for note in annotations:
            if note.step_index is None:
                notes.tape.append(note)
            else:
                notes.steps.setdefault(note.step_index, []).append(note)
        return notes


NO_NOTES = TapeNotes()
"""The notes of a tape without annotations."""


def _latest_rating(notes: Sequence[Annotation]) -> float | None:
    rated = [note for note in notes if note.rating is not None]
    if not rated:
        return None
    return max(rated, key=lambda note: (note.created_at, note.id)).rating


# ----------------------------------------------------------------------------- split


def split_of(group: str, *, validation: float, seed: int = 0) -> Split:
    """The side of the split a group key falls on: a seeded hash, stable as data grows.

    About `validation` of the groups go to validation; with few groups the share is rough.
    """
    if validation <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation else "train"


# ----------------------------------------------------------------------------- reading


@dataclass
class Selected:
    """A tape chosen for export, with what the exporter needs besides its steps."""

    tape: Tape[Any, Any]
    agent: str | None
    """The agent that ran it (the store's `agent` column), when known."""
    group: str
    """The split key: the task id, or the id of the oldest known ancestor."""
    annotations: list[Annotation]
    """The tape's annotations, read only when the selection uses them."""
    summary: TapeSummary | None = None
    """The stored header (None for tapes in memory)."""


def select_tapes(
    source: TapeStore | Iterable[Tape[Any, Any]],
    selection: Selection,
    *,
    split_by: SplitBy = "task",
    on_unreadable: Callable[[CorruptTapeError], None] | None = None,
) -> Iterator[Selected]:
    """The tapes of `source` that pass `selection`, loaded in batches.

    A stored tape that cannot be read raises `CorruptTapeError`; with `on_unreadable`, it is
    handed to that and skipped, and the others are selected.
    """
    selection.check()
    from tapeagents.store import TapeStore

    if not isinstance(source, TapeStore):
        for tape in source:
            agent = _tape_agent(tape)
            if selection.tape_ids is not None and tape.id not in selection.tape_ids:
                continue
            if selection.matches_tape(tape, agent):
                root = tape.parent_id or tape.id
                yield Selected(tape, agent, _group(tape.metadata.task_id, root, split_by), [])
        return
    store = source
    chosen = stored_choices(store, selection, split_by=split_by, on_unreadable=on_unreadable)
    by_id = {summary.id: (summary, group) for summary, group in chosen}
    tapes = store.iter_tapes(
        [summary.id for summary, _ in chosen], batch_size=_BATCH, on_unreadable=on_unreadable
    )
    for tape in tapes:
        summary, group = by_id[tape.id]
        notes = store.annotations(tape.id) if selection.uses_annotations else []
        yield Selected(tape, summary.agent, group, notes, summary)


def stored_choices(
    store: TapeStore,
    selection: Selection,
    *,
    split_by: SplitBy = "task",
    on_unreadable: Callable[[CorruptTapeError], None] | None = None,
) -> list[tuple[TapeSummary, str]]:
    """The stored tapes that pass the tape filters, in export order, with their split keys.

    A tape whose header cannot be read raises `CorruptTapeError`; with `on_unreadable`, it
    is handed to that and left out.
    """
    from tapeagents.store import queries

    if selection.tape_ids is not None:
        summaries = []
        for tape_id in selection.tape_ids:
            try:
                summary = store.summary(tape_id)
            except CorruptTapeError as error:
                if on_unreadable is None:
                    raise
                on_unreadable(error)
                continue
            if selection.matches(summary):
                summaries.append(summary)
    else:
        found = queries.list_tapes(
            store.database,
            selection.tape_filter(),
            limit=None,
            offset=0,
            on_unreadable=on_unreadable,
        )
        summaries = [s for s in reversed(found) if selection._reward_ok(s.reward)]  # oldest first
    parents = {s.id: s.parent_id for s in summaries}
    return [
        (summary, _group(summary.task_id, _lineage_root(summary.id, parents), split_by))
        for summary in summaries
    ]


def _group(task_id: str | None, root: str, split_by: SplitBy) -> str:
    if split_by == "task" and task_id is not None:
        return f"task:{task_id}"
    return f"tape:{root}"


def _lineage_root(tape_id: str, parents: Mapping[str, str | None]) -> str:
    """The oldest ancestor reachable through the selected tapes (or the first one outside)."""
    current, seen = tape_id, set()
    while (parent := parents.get(current)) is not None and current not in seen:
        seen.add(current)
        current = parent
    return current


def _tape_agent(tape: Tape[Any, Any]) -> str | None:
    """The root agent of the first step an agent wrote (for tapes that are not stored)."""
    for step in tape.steps:
        if step.metadata.agent:
            return step.metadata.agent.split("/", 1)[0]
    return tape.author
