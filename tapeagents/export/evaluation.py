"""Evaluation records: one row per tape, and the subjects × tasks response matrix.

A record says who worked on which task (the subject: agent and model), how it ended (outcome,
reward, error) and what it cost (steps, LLM calls, tokens, dollars, seconds). The response matrix
has one row per subject and one column per task, holding the mean score of the subject's tapes
on the task: the input of item-response-theory analyses and leaderboards.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from tapeagents.errors import CorruptTapeError, UsageError
from tapeagents.export.files import open_output
from tapeagents.export.report import ExportReport
from tapeagents.export.selection import Selection, select_tapes
from tapeagents.llms import LLMCall
from tapeagents.steps import Error
from tapeagents.tape import Tape

if TYPE_CHECKING:
    from tapeagents.store import TapeStore

__all__ = [
    "EvalRecord",
    "ResponseMatrix",
    "Score",
    "eval_record",
    "eval_records",
    "missing_scores",
    "read_eval_records",
    "response_matrix",
    "write_eval_records",
]

Score = Literal["auto", "reward", "success"]
"""What a matrix cell holds: the reward (`auto` falls back to success when there is none), or
1/0 for outcome "success"/anything else."""


class EvalRecord(BaseModel):
    """How one tape went."""

    tape_id: str
    task_id: str | None
    subject: str
    """Who was evaluated: `agent@model` (models joined with "+", sorted)."""
    agent: str | None
    model: str | None
    outcome: str | None
    reward: float | None
    status: str | None
    """How the last run on the tape ended (`stopped`, `error`, ...), for stored tapes."""
    steps: int
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    cost: float | None
    """US dollars, when every call's backend knows its price."""
    latency: float
    """Seconds spent waiting for the LLM calls."""
    duration: float | None
    """Seconds from the tape's creation to its last update, for stored tapes."""
    error: str | None
    created_at: float | None


def eval_record(
    tape: Tape[Any, Any],
    llm_calls: Sequence[LLMCall],
    *,
    agent: str | None = None,
    status: str | None = None,
    created_at: float | None = None,
    updated_at: float | None = None,
    subject: str | None = None,
) -> EvalRecord:
    """The evaluation record of one tape, from the tape and the LLM calls it made."""
    agent = agent or _agent_of(tape)
    models = sorted({call.model for call in llm_calls})
    model = "+".join(models) if models else None
    costs = [call.output.cost for call in llm_calls]
    prompt_tokens = sum(call.output.usage.prompt_tokens for call in llm_calls)
    completion_tokens = sum(call.output.usage.completion_tokens for call in llm_calls)
    error = tape.metadata.error
    if error is None and status == "error":
        errors = [step for step in tape.steps if isinstance(step, Error)]
        error = errors[-1].error if errors else "the run ended with an error"
    duration = None
    if created_at is not None and updated_at is not None:
        duration = max(0.0, updated_at - created_at)
    return EvalRecord(
        tape_id=tape.id,
        task_id=tape.metadata.task_id,
        subject=subject or f"{agent or '?'}@{model or 'no-llm'}",
        agent=agent,
        model=model,
        outcome=tape.metadata.outcome,
        reward=tape.metadata.reward,
        status=status,
        steps=len(tape.steps),
        llm_calls=len(llm_calls),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens=prompt_tokens + completion_tokens,
        cost=None if not costs or any(c is None for c in costs) else sum(c or 0.0 for c in costs),
        latency=sum(call.latency for call in llm_calls),
        duration=duration,
        error=error,
        created_at=created_at,
    )


def eval_records(
    source: TapeStore | Iterable[tuple[Tape[Any, Any], Sequence[LLMCall]]],
    selection: Selection | None = None,
    *,
    subject: Callable[[EvalRecord], str] | None = None,
    report: ExportReport | None = None,
) -> Iterator[EvalRecord]:
    """Evaluation records of the selected stored tapes (or of `(tape, llm_calls)` pairs).

    `subject` renames subjects, for example to group runs of one configuration:
    `subject=lambda r: f"{r.agent}-v2"`. With a `report`, a stored tape that the store cannot
    read (nor its LLM calls) gives no record: it is listed in `report.unreadable` and the
    others go on. Without one, it raises `CorruptTapeError`, so that no tape is left out of an
    evaluation unnoticed.
    """
    from tapeagents.store import TapeStore

    selection = selection or Selection()
    collect = report is not None
    report = report if report is not None else ExportReport()
    if isinstance(source, TapeStore):
        store = source
        skip = report.unreadable_tape if collect else None
        for chosen in select_tapes(store, selection, on_unreadable=skip):
            summary = chosen.summary
            assert summary is not None
            try:
                calls = store.llm_calls_of(chosen.tape)
            except CorruptTapeError as error:
                if not collect:
                    raise
                report.unreadable_tape(error)
                continue
            report.tapes += 1
            record = eval_record(
                chosen.tape,
                calls,
                agent=summary.agent,
                status=summary.status,
                created_at=summary.created_at,
                updated_at=summary.updated_at,
            )
            yield _renamed(record, subject)
        return
    for tape, calls in source:
        yield _renamed(eval_record(tape, calls), subject)


def _renamed(record: EvalRecord, subject: Callable[[EvalRecord], str] | None) -> EvalRecord:
    if subject is None:
        return record
    return record.model_copy(update={"subject": subject(record)})


def _agent_of(tape: Tape[Any, Any]) -> str | None:
    for step in tape.steps:
        if step.metadata.agent:
            return step.metadata.agent.split("/", 1)[0]
    return tape.author


_FIELDS = list(EvalRecord.model_fields)


def write_eval_records(records: Iterable[EvalRecord], path: str | Path) -> int:
    """Write records as JSONL, or as CSV when `path` ends in `.csv`. Returns how many."""
    count = 0
    out = open_output(path)
    with out:
        if str(path).lower().endswith(".csv"):
            writer = csv.DictWriter(out, fieldnames=_FIELDS, lineterminator="\n")
            writer.writeheader()
            for record in records:
                writer.writerow(record.model_dump())
                count += 1
        else:
            for record in records:
                out.write(record.model_dump_json() + "\n")
                count += 1
    return count


def read_eval_records(path: str | Path) -> list[EvalRecord]:
    """Records written by `write_eval_records` (JSONL or CSV)."""
    try:
        with open(path, encoding="utf-8", newline="") as source:
            if str(path).lower().endswith(".csv"):
                return [
                    EvalRecord.model_validate({k: (v if v != "" else None) for k, v in row.items()})
                    for row in csv.DictReader(source)
                ]
            return [EvalRecord.model_validate_json(line) for line in source if line.strip()]
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    except ValueError as error:
        raise UsageError(f"{path} does not hold evaluation records: {error}") from None


# ----------------------------------------------------------------------------- matrix


class ResponseMatrix(BaseModel):
    """Subjects × tasks: the mean score of each subject's tapes on each task (None: no tape)."""

    subjects: list[str]
    tasks: list[str]
    scores: list[list[float | None]]
    """`scores[i][j]`: subject i on task j."""
    counts: list[list[int]]
    """How many tapes each score averages."""

    def score(self, subject: str, task: str) -> float | None:
        return self.scores[self.subjects.index(subject)][self.tasks.index(task)]

    def write(self, path: str | Path) -> None:
        """Write as CSV (a `subject` column, then one column per task) or, for `.json`, JSON."""
        with open_output(path) as out:
            if str(path).lower().endswith(".json"):
                out.write(self.model_dump_json(indent=1) + "\n")
                return
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(["subject", *self.tasks])
            for subject, row in zip(self.subjects, self.scores, strict=True):
                writer.writerow([subject, *("" if v is None else f"{v:.6g}" for v in row)])


def response_matrix(records: Iterable[EvalRecord], *, score: Score = "auto") -> ResponseMatrix:
    """Build the subjects × tasks matrix; tapes without a task id or a score are left out."""
    sums: dict[tuple[str, str], float] = {}
    counts: dict[tuple[str, str], int] = {}
    subjects: dict[str, None] = {}
    tasks: dict[str, None] = {}
    for record in records:
        value = _score(record, score)
        if record.task_id is None or value is None:
            continue
        key = (record.subject, record.task_id)
        sums[key] = sums.get(key, 0.0) + value
        counts[key] = counts.get(key, 0) + 1
        subjects.setdefault(record.subject)
        tasks.setdefault(record.task_id)
    subject_list, task_list = sorted(subjects), sorted(tasks)
    return ResponseMatrix(
        subjects=subject_list,
        tasks=task_list,
        scores=[
            [sums[(s, t)] / counts[(s, t)] if (s, t) in counts else None for t in task_list]
            for s in subject_list
        ],
        counts=[[counts.get((s, t), 0) for t in task_list] for s in subject_list],
    )


_HOW_TO_SCORE = (
    "Record them on each tape's metadata: the task id when the run starts "
    "(Tape(metadata=TapeMetadata(task_id=...)); `tapeagents batch` sets it), and the outcome "
    '("success", "failure") or the reward once the run is judged, saved with '
    "store.set_status(tape.id, status, metadata=tape.metadata). Scoring environments "
    "(MiniWoB, the form filler) record both themselves."
)
"""How to give tapes what the response matrix needs; the end of `missing_scores`' message."""


def missing_scores(records: Sequence[EvalRecord], *, score: Score = "auto") -> str | None:
    """What keeps records out of the response matrix, and how to record it; None if nothing.

    The matrix holds only tapes that have a task id and a score (see `Score`); an export over
    tapes that have neither would otherwise be an empty matrix without a word of why.
    """
    what = {"auto": "outcome or reward", "reward": "reward", "success": "outcome"}[score]
    total = len(records)
    no_task = sum(record.task_id is None for record in records)
    no_score = sum(_score(record, score) is None for record in records)
    if not no_task and not no_score:
        return None
    missing = []
    if no_task:
        missing.append(f"{no_task} of {total} {_tapes(total)} no task id")
    if no_score:
        missing.append(f"{no_score} of {total} {_tapes(total)} no {what}")
    usable = sum(r.task_id is not None and _score(r, score) is not None for r in records)
    return (
        f"{' and '.join(missing)}: the response matrix holds only tapes with a task id and a "
        f"score ({what}), {usable} of {total} here. {_HOW_TO_SCORE}"
    )


def _tapes(count: int) -> str:
    return "tape has" if count == 1 else "tapes have"


def _score(record: EvalRecord, score: Score) -> float | None:
    if score in ("auto", "reward") and record.reward is not None and math.isfinite(record.reward):
        return record.reward
    if score == "reward" or record.outcome is None:
        return None
    return 1.0 if record.outcome == "success" else 0.0
