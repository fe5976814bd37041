"""Response matrices: who solved what, as a subjects × items array with gaps.

`Responses` holds scores in [0, 1] (1: solved) and NaN where a subject never tried an item;
evaluation data is usually sparse (the BRIDGE matrix is about half empty). It reads:

- py-irt JSONL (`{"subject_id": ..., "responses": {item: 0/1}}` per line), BRIDGE's format;
- the evaluation exporter's records (`tapeagents export -f eval`, JSONL or CSV) and its
  response matrix (`ResponseMatrix.write`, CSV or JSON);
- a tape store, through the exporter (`from_store`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tapeagents.errors import UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from tapeagents.export import EvalRecord, ResponseMatrix, Selection
    from tapeagents.store import TapeStore

__all__ = [
    "Responses",
    "from_records",
    "from_response_matrix",
    "from_store",
    "read_pyirt_jsonl",
    "read_responses",
]

Score = Literal["auto", "reward", "success"]


@dataclass(frozen=True)
class Responses:
    """Subjects × items scores in [0, 1]; NaN where the subject has no result on the item."""

    subjects: list[str]
    items: list[str]
    scores: NDArray[np.float64]
    """`scores[s, i]`: subject s on item i (the mean when several tapes were scored)."""

    def __post_init__(self) -> None:
        shape = (len(self.subjects), len(self.items))
        if self.scores.shape != shape:
            raise UsageError(f"scores have shape {self.scores.shape}, expected {shape}.")
        seen = self.scores[~np.isnan(self.scores)]
        if seen.size and (seen.min() < 0.0 or seen.max() > 1.0):
            raise UsageError(
                "Scores must lie in [0, 1] (1: solved); rescale rewards before fitting IRT."
            )

    @property
    def observed(self) -> NDArray[np.bool_]:
        """Where a score exists."""
        return ~np.isnan(self.scores)

    @property
    def density(self) -> float:
        """The share of cells with a score."""
        return float(self.observed.mean()) if self.scores.size else 0.0

    def subset(
        self, *, subjects: Sequence[str] | None = None, items: Sequence[str] | None = None
    ) -> Responses:
        """The same matrix restricted to (and ordered by) these subjects and items."""
        rows = [self._index(self.subjects, s, "subject") for s in subjects or self.subjects]
        cols = [self._index(self.items, i, "item") for i in items or self.items]
        return Responses(
            subjects=[self.subjects[r] for r in rows],
            items=[self.items[c] for c in cols],
            scores=self.scores[np.ix_(rows, cols)],
        )

    def without_empty(self) -> Responses:
        """Drop subjects and items that have no score at all (they carry no information)."""
        seen = self.observed
        rows = [self.subjects[k] for k in np.flatnonzero(seen.any(axis=1))]
        cols = [self.items[k] for k in np.flatnonzero(seen.any(axis=0))]
        return self.subset(subjects=rows, items=cols)

    def write_pyirt_jsonl(self, path: str | Path) -> None:
        """Write in py-irt's JSONL format (scores rounded to 0/1), for the reference tool."""
        with open(path, "w", encoding="utf-8") as out:
            for s, subject in enumerate(self.subjects):
                row = {
                    item: round(float(v))
                    for item, v in zip(self.items, self.scores[s], strict=True)
                    if not math.isnan(v)
                }
                out.write(json.dumps({"subject_id": subject, "responses": row}) + "\n")

    @staticmethod
    def _index(names: list[str], name: str, what: str) -> int:
        try:
            return names.index(name)
        except ValueError:
            raise UsageError(f"Unknown {what} {name!r}; the matrix has {len(names)}.") from None


def _from_cells(cells: dict[tuple[str, str], list[float]]) -> Responses:
    subjects = sorted({s for s, _ in cells})
    items = sorted({i for _, i in cells})
    row = {s: k for k, s in enumerate(subjects)}
    col = {i: k for k, i in enumerate(items)}
    scores = np.full((len(subjects), len(items)), np.nan)
    for (s, i), values in cells.items():
        scores[row[s], col[i]] = sum(values) / len(values)
    return Responses(subjects=subjects, items=items, scores=scores)


def read_pyirt_jsonl(path: str | Path) -> Responses:
    """Read py-irt JSONL: one `{"subject_id": ..., "responses": {item: 0 or 1}}` per line.

    Subjects keep the file's order and items their order of first appearance, as py-irt does.
    """
    subjects: list[str] = []
    rows: list[dict[str, float]] = []
    items: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as source:
            for number, line in enumerate(source, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    subject, responses = str(record["subject_id"]), record["responses"]
                except (ValueError, KeyError, TypeError):
                    raise UsageError(
                        f"{path}:{number} is not a py-irt line "
                        '({"subject_id": ..., "responses": {item: 0 or 1}}).'
                    ) from None
                subjects.append(subject)
                rows.append({str(k): float(v) for k, v in responses.items()})
                for item in responses:
                    items.setdefault(str(item), len(items))
    except OSError as error:
        raise UsageError(f"Cannot read {path}: {error.strerror or error}.") from None
    scores = np.full((len(subjects), len(items)), np.nan)
    for s, row in enumerate(rows):
        for item, value in row.items():
            scores[s, items[item]] = value
    return Responses(subjects=subjects, items=list(items), scores=scores)


def _record_score(record: Any, score: Score) -> float | None:
    reward, outcome = record.reward, record.outcome
    if score in ("auto", "reward") and reward is not None and math.isfinite(reward):
        return float(reward)
    if score == "reward" or outcome is None:
        return None
    return 1.0 if outcome == "success" else 0.0


def from_records(records: Iterable[EvalRecord], *, score: Score = "auto") -> Responses:
    """The matrix of evaluation records: the mean score of each subject's tapes on each task.

    Records without a task id or a score are left out (`tapeagents.export.missing_scores`
    says why); the score is the reward, or 1/0 for outcome success/other (see `Score`).
    """
    cells: dict[tuple[str, str], list[float]] = {}
    for record in records:
        value = _record_score(record, score)
        if record.task_id is None or value is None:
            continue
        cells.setdefault((record.subject, record.task_id), []).append(value)
    if not cells:
        raise UsageError(
            "No record has both a task id and a score: record the task id and the outcome "
            "(or reward) on each tape's metadata; `tapeagents export -f eval` lists what is "
            "missing."
        )
    return _from_cells(cells)


def from_response_matrix(matrix: ResponseMatrix) -> Responses:
    """The exporter's `ResponseMatrix` (subjects × tasks, None where no tape) as `Responses`."""
    scores = np.array(
        [[np.nan if v is None else v for v in row] for row in matrix.scores], dtype=float
    ).reshape(len(matrix.subjects), len(matrix.tasks))
    return Responses(subjects=list(matrix.subjects), items=list(matrix.tasks), scores=scores)


def from_store(
    store: TapeStore, selection: Selection | None = None, *, score: Score = "auto"
) -> Responses:
    """The matrix of the selected stored tapes, through the evaluation exporter."""
    from tapeagents.export import eval_records

    return from_records(eval_records(store, selection), score=score)


def _read_matrix_csv(path: Path) -> Responses:
    with open(path, encoding="utf-8", newline="") as source:
        reader = csv.reader(source)
        header = next(reader, None)
        if not header or header[0] != "subject":
            raise UsageError(f"{path} is not a response matrix CSV (first column `subject`).")
        subjects, rows = [], []
        for row in reader:
            subjects.append(row[0])
            rows.append([float(v) if v != "" else np.nan for v in row[1:]])
    scores = np.array(rows, dtype=float).reshape(len(subjects), len(header) - 1)
    return Responses(subjects=subjects, items=header[1:], scores=scores)


def read_responses(path: str | Path, *, score: Score = "auto") -> Responses:
    """Read a matrix from a file, whichever of the supported formats it holds.

    `.jsonl`: py-irt lines or evaluation records; `.csv`: a response matrix (`subject`
    column first) or evaluation records; `.json`: a `ResponseMatrix`.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist; give a py-irt JSONL, eval records or a matrix.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        from tapeagents.export import ResponseMatrix

        return from_response_matrix(
            ResponseMatrix.model_validate_json(path.read_text(encoding="utf-8"))
        )
    with open(path, encoding="utf-8") as source:
        first = source.readline()
    if suffix == ".csv" and first.startswith("subject,"):
        return _read_matrix_csv(path)
    if suffix == ".jsonl" and '"subject_id"' in first and '"responses"' in first:
        return read_pyirt_jsonl(path)
    if suffix in (".jsonl", ".csv"):
        from tapeagents.export import read_eval_records

        return from_records(read_eval_records(path), score=score)
    raise UsageError(
        f"Cannot tell the format of {path}: use .jsonl (py-irt or eval records), "
        ".csv (response matrix or eval records) or .json (response matrix)."
    )
