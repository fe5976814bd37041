"""Chat JSONL from a store in one call, optionally with worker processes.

`export_chat_jsonl` is `write_chat_jsonl(training_examples(...))`. With `workers=N`, N processes
read and render chunks of the selected tapes, each from its own connection to the store, and
this process de-duplicates and writes their lines in the order of the tapes: the file and the
report are the same as with one process. Rebuilding examples is pure Python, so one process
uses one core; workers use more.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tapeagents.errors import CorruptTapeError, TapeAgentsError, UsageError
from tapeagents.export.examples import (
    TrainingExample,
    source_agent_of,
    tape_examples,
    training_examples,
)
from tapeagents.export.files import open_output
from tapeagents.export.formats import chat_line, write_chat_jsonl
from tapeagents.export.report import ExportError, ExportProblem, ExportReport, OnProblem
from tapeagents.export.selection import Selection, Split, SplitBy, split_of, stored_choices

if TYPE_CHECKING:
    from tapeagents.agent import Agent
    from tapeagents.store import TapeStore
    from tapeagents.tape import Tape

__all__ = ["export_chat_jsonl"]

CHUNK = 50
"""Tapes per job of a worker: big enough to read them in one query, small enough to keep every
worker busy to the end."""


def export_chat_jsonl(
    source: TapeStore | Iterable[Tape[Any, Any]],
    agent: Agent,
    path: str | Path,
    selection: Selection | None = None,
    *,
    validation_path: str | Path | None = None,
    workers: int = 1,
    source_agent: str | None = None,
    dedupe: bool = True,
    validation: float = 0.0,
    seed: int = 0,
    split_by: SplitBy = "task",
    on_problem: OnProblem = "skip_tape",
    report: ExportReport | None = None,
    on_progress: Callable[[ExportReport], None] | None = None,
) -> ExportReport:
    """Write the training examples of the selected tapes as OpenAI chat fine-tuning JSONL.

    The arguments are those of `training_examples` and `write_chat_jsonl`, plus:

    Args:
        workers: Processes that rebuild the examples. Above 1, each reads its tapes from the
            store itself (a file or server database; tapes in memory and in-memory SQLite are
            exported by this process alone), and needs the `fork` start method (Linux, macOS).
        on_progress: Called with the report as tapes are exported (for progress bars).

    Returns:
        The exporter's report (the same whatever the number of workers).

    Example:
        >>> report = export_chat_jsonl(store, agent, "train.jsonl", workers=2)
    """
    selection = selection or Selection()
    report = report if report is not None else ExportReport()
    if workers < 1:
        raise UsageError(f"workers is a number of processes, at least 1; got {workers}.")
    if not 0 <= validation < 1:
        raise UsageError(f"validation is a share of the data, from 0 to below 1; got {validation}.")
    if workers == 1 or not _can_fork(source):
        examples = training_examples(
            source,
            agent,
            selection,
            source_agent=source_agent,
            dedupe=dedupe,
            validation=validation,
            seed=seed,
            split_by=split_by,
            on_problem=on_problem,
            report=report,
        )
        progress = (lambda _: on_progress(report)) if on_progress is not None else None
        write_chat_jsonl(examples, path, validation_path=validation_path, on_example=progress)
        return report

    store: TapeStore = source  # type: ignore[assignment]
    selection.check()
    skip = report.unreadable_tape if on_problem != "raise" else None
    jobs = _jobs(store, selection, split_by, validation, seed, skip)
    files: dict[str, IO[bytes]] = {}
    try:
        files["train"] = open_output(path, binary=True)
        if validation_path is not None:
            files["validation"] = open_output(validation_path, binary=True)
        # The workers write their lines to files of their own, next to the output (the same
        # file system, so the kernel copies them): lines never travel through pipes.
        with tempfile.TemporaryDirectory(prefix=".export-", dir=Path(path).parent) as parts:
            job = _Job(store.url, agent, selection, source_agent, on_problem, dedupe, parts)
            seen: set[str] = set()
            for part, tapes, unreadable, error in _run(job, jobs, workers):
                with open(part, "rb") as lines:
                    for tape in tapes:
                        _merge(tape, lines, report, seen, files)
                        if on_progress is not None:
                            on_progress(report)
                report.unreadable += unreadable
                os.unlink(part)
                if error is not None:
                    raise error
    finally:
        for out in files.values():
            out.close()
    return report


def _can_fork(source: object) -> bool:
    """Whether worker processes can read `source` on their own."""
    from tapeagents.store import TapeStore

    if not isinstance(source, TapeStore):
        return False
    url = source.engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return False
    return "fork" in multiprocessing.get_all_start_methods()


@dataclass
class _Job:
    """What every worker needs; inherited through `fork`, never pickled (agents hold models)."""

    url: str
    agent: Agent
    selection: Selection
    source_agent: str | None
    on_problem: OnProblem
    dedupe: bool
    parts: str
    """The directory where workers write their lines."""


@dataclass
class _TapeLines:
    """One tape's share of the export, as a worker returns it."""

    side: Split
    ends: list[int]
    """Where each example's line ends in the worker's file (the first starts at `start`)."""
    start: int
    keys: list[str] | None
    """The examples' de-duplication keys (None: no de-duplication)."""
    skipped: list[tuple[str, int]]
    problems: list[ExportProblem]


def _jobs(
    store: TapeStore,
    selection: Selection,
    split_by: SplitBy,
    validation: float,
    seed: int,
    on_unreadable: Callable[[CorruptTapeError], None] | None,
) -> list[list[tuple[str, str | None, Split]]]:
    """Chunks of (tape id, stored agent, side of the split), in export order; tapes whose
    header cannot be read go to `on_unreadable` (None: they raise)."""
    choices = stored_choices(store, selection, split_by=split_by, on_unreadable=on_unreadable)
    chosen = [
        (summary.id, summary.agent, split_of(group, validation=validation, seed=seed))
        for summary, group in choices
    ]
    return [chosen[i : i + CHUNK] for i in range(0, len(chosen), CHUNK)]


_Result = tuple[str, list[_TapeLines], list[ExportProblem], TapeAgentsError | None]
"""A worker's part file, its tapes' lines, the tapes it could not read, and the error that
ended the chunk (None: the whole chunk was exported)."""


def _run(
    job: _Job, jobs: Sequence[list[tuple[str, str | None, Split]]], workers: int
) -> Iterator[_Result]:
    """The workers' results, job by job in order. At most two jobs per worker are under way or
    waiting, so the parts on disk stay few."""
    context = multiprocessing.get_context("fork")
    numbered = iter(enumerate(jobs))
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks: a lock another thread holds
        # stays held in the child. The workers only use their own connection and pure Python,
        # and the command line runs no thread then (its progress bar is redrawn by hand).
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pool = context.Pool(min(workers, max(len(jobs), 1)), _start_worker, (job,))
    with pool:
        waiting = deque(pool.apply_async(_export_chunk, j) for j in _take(numbered, 2 * workers))
        while waiting:
            result = waiting.popleft().get()
            waiting.extend(pool.apply_async(_export_chunk, j) for j in _take(numbered, 1))
            yield result


def _take(queue: Iterator[Any], count: int) -> list[Any]:
    return [item for _, item in zip(range(count), queue, strict=False)]


def _merge(
    tape: _TapeLines,
    lines: IO[bytes],
    report: ExportReport,
    seen: set[str],
    files: dict[str, IO[bytes]],
) -> None:
    """Add a worker's tape to the report and its new lines to the files, as `training_examples`
    and `write_chat_jsonl` do in one process."""
    report.tapes += 1
    for reason, count in tape.skipped:
        report.skip(reason, count)
    report.problems += tape.problems
    out = files.get(tape.side)
    kept, start, end = 0, tape.start, tape.start  # lines [start, end) are new and not written
    for index, stop in enumerate(tape.ends):
        key = tape.keys[index] if tape.keys is not None else None
        if key is not None and key in seen:
            report.skip("duplicate")
            if out is not None:
                _copy(lines, start, end, out)
            start = end = stop
            continue
        if key is not None:
            seen.add(key)
        kept += 1
        end = stop
    if out is not None:
        _copy(lines, start, end, out)
    if kept:
        report.examples += kept
        if tape.side == "train":
            report.train += kept
        else:
            report.validation += kept
        report.tapes_used += 1


def _copy(source: IO[bytes], start: int, end: int, out: IO[bytes]) -> None:
    """Bytes [start, end) of `source` to the end of `out`: by the kernel when it can."""
    length = end - start
    if length <= 0:
        return
    if _copy_file_range is not None:
        out.flush()
        try:
            while length > 0:
                copied = _copy_file_range(source.fileno(), out.fileno(), length, start)
                if copied == 0:
                    break
                start, length = start + copied, length - copied
            if length == 0:
                return
        except OSError:  # another file system, or a kernel without it: copy it here
            pass
    source.seek(start)
    out.write(source.read(length))


_copy_file_range = getattr(os, "copy_file_range", None)


# ----------------------------------------------------------------------------- in a worker

_worker: tuple[_Job, TapeStore] | None = None


def _start_worker(job: _Job) -> None:
    from tapeagents.store import TapeStore

    global _worker
    _worker = (job, TapeStore(job.url, upgrade=False))
    # What the worker inherited lives as long as it does: keep it out of the garbage
    # collector's full passes (which would otherwise scan it again and again).
    gc.freeze()


def _export_chunk(index: int, chunk: list[tuple[str, str | None, Split]]) -> _Result:
    """Rebuild the examples of a chunk of tapes and write their chat lines to a part file.

    A tape the store cannot read is left out and reported, as in one process. A tapeagents
    error (a problem with `on_problem="raise"`, which also stops at an unreadable tape) ends
    the chunk: it comes back after the tapes before it, so the parent writes those first, as
    one process would."""
    assert _worker is not None
    job, store = _worker
    uses_notes = job.selection.uses_annotations
    done: list[_TapeLines] = []
    unreadable = ExportReport()
    skip = unreadable.unreadable_tape if job.on_problem != "raise" else None
    chosen = {tape_id: (stored_agent, side) for tape_id, stored_agent, side in chunk}
    part = os.path.join(job.parts, f"{index}.jsonl")
    with open(part, "wb") as out:
        try:
            tapes = store.iter_tapes(
                [tape_id for tape_id, _, _ in chunk], batch_size=len(chunk), on_unreadable=skip
            )
            for tape in tapes:
                tape_id = tape.id
                stored_agent, side = chosen[tape_id]
                report = ExportReport()
                try:
                    examples = tape_examples(
                        tape,
                        job.agent,
                        source_agent=job.source_agent or source_agent_of(tape, stored_agent),
                        selection=job.selection if uses_notes else None,
                        report=report,
                        on_problem=job.on_problem,
                        annotations=store.annotations(tape_id) if uses_notes else (),
                        split=side,
                    )
                except ExportError:  # the tape was read: it counts, with what it skipped so far
                    done.append(_write_lines(out, [], side, report, job.dedupe))
                    raise
                done.append(_write_lines(out, examples, side, report, job.dedupe))
        except TapeAgentsError as error:
            return part, done, unreadable.unreadable, error
    return part, done, unreadable.unreadable, None


def _write_lines(
    out: IO[bytes],
    examples: Sequence[TrainingExample],
    side: Split,
    report: ExportReport,
    dedupe: bool,
) -> _TapeLines:
    """Write a tape's chat lines to the worker's file and say where they are."""
    start = out.tell()
    encoded = [chat_line(example).encode() for example in examples]
    out.write(b"".join(encoded))
    ends = list(accumulate(map(len, encoded), initial=start))[1:]
    keys = [example.key() for example in examples] if dedupe else None
    return _TapeLines(side, ends, start, keys, list(report.skipped.items()), report.problems)
