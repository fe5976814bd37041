"""Response matrices from the evaluation exporter's records, files and a real store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tapeagents.cli import app
from tapeagents.errors import UsageError
from tapeagents.eval import from_records, from_response_matrix, from_store, read_responses
from tapeagents.export import EvalRecord, response_matrix, write_eval_records
from tapeagents.store import TapeStore
from tapeagents.tape import Tape, TapeMetadata


def record(subject: str, task: str | None, outcome: str | None, reward: float | None = None):
    return EvalRecord(
        tape_id=f"{subject}-{task}-{outcome}",
        task_id=task,
        subject=subject,
        agent=subject,
        model=None,
        outcome=outcome,
        reward=reward,
        status=None,
        steps=1,
        llm_calls=0,
        prompt_tokens=0,
        completion_tokens=0,
        tokens=0,
        cost=None,
        latency=0.0,
        duration=None,
        error=None,
        created_at=None,
    )


RECORDS = [
    record("a", "t1", "success"),
    record("a", "t1", "failure"),
    record("a", "t2", "success"),
    record("b", "t2", None, reward=0.25),
    record("b", None, "success"),  # no task: left out
]


def test_records_become_the_exporters_matrix() -> None:
    responses = from_records(RECORDS)
    assert responses.subjects == ["a", "b"] and responses.items == ["t1", "t2"]
    assert responses.scores[0].tolist() == [0.5, 1.0]
    assert np.isnan(responses.scores[1, 0]) and responses.scores[1, 1] == 0.25
    same = from_response_matrix(response_matrix(RECORDS))
    assert np.array_equal(
        np.nan_to_num(same.scores, nan=-1), np.nan_to_num(responses.scores, nan=-1)
    )


def test_records_without_scores_say_how_to_record_them() -> None:
    with pytest.raises(UsageError, match="task id and a score"):
        from_records([record("a", None, "success")])


def test_files_from_the_exporter_read_back(tmp_path: Path) -> None:
    write_eval_records(RECORDS, tmp_path / "records.jsonl")
    write_eval_records(RECORDS, tmp_path / "records.csv")
    response_matrix(RECORDS).write(tmp_path / "matrix.csv")
    response_matrix(RECORDS).write(tmp_path / "matrix.json")
    expected = from_records(RECORDS)
    for name in ("records.jsonl", "records.csv", "matrix.csv", "matrix.json"):
        got = read_responses(tmp_path / name)
        assert got.subjects == expected.subjects and got.items == expected.items, name
        assert np.allclose(
            np.nan_to_num(got.scores, nan=-1), np.nan_to_num(expected.scores, nan=-1)
        )


def test_a_store_of_scored_tapes_fits_and_ranks_tasks(tmp_path: Path) -> None:
    """Three agents of rising skill on six tasks of rising difficulty, stored as real tapes."""
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    with TapeStore(url) as store:
        for skill, agent in enumerate(["weak", "mid", "strong"]):
            for hardness in range(6):
                for attempt in range(3):
                    solved = hardness <= 2 * skill + (attempt % 2)
                    tape = Tape(
                        metadata=TapeMetadata(
                            task_id=f"task{hardness}",
                            outcome="success" if solved else "failure",
                        ),
                        author=agent,
                    )
                    store.save(tape)
        responses = from_store(store)
    assert responses.items == [f"task{k}" for k in range(6)]
    assert len(responses.subjects) == 3
    result = CliRunner().invoke(app, ["eval", "irt", "--db", url, "--top", "6"])
    assert result.exit_code == 0, result.output
    assert "3 subjects × 6 items" in result.output
