"""Chat JSONL exported by worker processes: the same bytes and the same report as one process,
whatever the selection, the split, duplicates and problems; on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tapeagents import FinalAnswer, StepMetadata, Tape, UserMessage
from tapeagents.errors import StoreError, UsageError
from tapeagents.export import ExportError, ExportReport, Selection, export_chat_jsonl
from tapeagents.export import workers as workers_module
from tapeagents.steps import new_id
from tapeagents.store import TapeStore
from tests.export.agents import calc_agent, solve


def fill(store: TapeStore) -> list[str]:
    """Tapes of the calculator (and a copy of the first: duplicate examples), one tape with a
    step that names no node (a problem), one labelled "bad" at its second step."""
    agent = calc_agent()
    ids = [solve(store, agent, a, b).id for a, b in [(1, 2), (2, 3), (4, 4), (5, 1)]]
    copy = store.get(ids[0]).model_copy(update={"id": new_id()})
    store.save(copy, status="stopped", agent="calc")
    ids.insert(2, copy.id)
    odd = Tape(steps=[UserMessage(content="What is 2 + 2?"), FinalAnswer(answer="4")])
    store.save(odd, status="stopped", agent="calc")
    ids.append(odd.id)
    ids += [solve(store, agent, a, 7).id for a in range(6, 12)]
    store.annotate(ids[3], 1, label="bad")
    return ids


def export(store: TapeStore, tmp_path: Path, workers: int, **options: Any) -> tuple[bytes, ...]:
    out = tmp_path / f"w{workers}"
    report = export_chat_jsonl(
        store,
        calc_agent(),
        out / "train.jsonl",
        validation_path=out / "valid.jsonl",
        workers=workers,
        **options,
    )
    assert not list(out.glob(".export-*"))  # the workers' files are gone
    texts = [(out / name).read_bytes() for name in ("train.jsonl", "valid.jsonl")]
    return (*texts, report.model_dump_json().encode())


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"validation": 0.4, "seed": 1},
        {"dedupe": False, "split_by": "tape", "validation": 0.5},
        {"selection": Selection(drop_labels=["bad"]), "on_problem": "skip_output"},
    ],
)
def test_workers_write_what_one_process_writes(
    store: TapeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    fill(store)
    monkeypatch.setattr(workers_module, "CHUNK", 2)  # several jobs, duplicates across them
    one = export(store, tmp_path, 1, **options)
    assert one[0].count(b"\n") + one[1].count(b"\n") >= 10
    assert export(store, tmp_path, 2, **options) == one
    assert export(store, tmp_path, 3, **options) == one


def test_report_counts_duplicates_and_problems_with_workers(
    store: TapeStore, tmp_path: Path
) -> None:
    fill(store)
    report = ExportReport()
    export_chat_jsonl(store, calc_agent(), tmp_path / "t.jsonl", workers=2, report=report)
    assert report.tapes == 12 and report.tapes_used == 10
    assert report.skipped == {"duplicate": 2}
    assert "names no agent and node" in report.problems[0].reason
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == report.examples == report.train == 20


def test_a_problem_stops_the_export_after_the_tapes_before_it(
    store: TapeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(store)
    monkeypatch.setattr(workers_module, "CHUNK", 4)  # the problem is in the middle of a job
    written = []
    for workers in (1, 2):
        path = tmp_path / f"{workers}.jsonl"
        with pytest.raises(ExportError, match="names no agent and node"):
            export_chat_jsonl(store, calc_agent(), path, workers=workers, on_problem="raise")
        written.append(path.read_bytes())
    assert written[0] == written[1] and written[0].count(b"\n") == 8


def test_unreadable_tapes_are_skipped_and_reported_by_workers_as_by_one_process(
    store: TapeStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = fill(store)
    monkeypatch.setattr(workers_module, "CHUNK", 3)  # bad tapes in the middle of jobs
    with store.engine.begin() as connection:
        for tape_id in (ids[4], ids[9]):
            connection.execute(
                sa.text("UPDATE steps SET data = '{broken' WHERE tape_id = :id AND idx = 1"),
                {"id": tape_id},
            )
    one = export(store, tmp_path, 1)
    assert export(store, tmp_path, 2) == one
    report = ExportReport.model_validate_json(one[2])
    assert [p.tape_id for p in report.unreadable] == [ids[4], ids[9]]
    assert report.unreadable[0].step_index == 1
    assert "step 1 (reasoning) is corrupt: Invalid JSON" in report.unreadable[0].reason
    assert report.tapes == 10 and one[0].count(b"\n") == 16  # every other tape is exported
    with pytest.raises(StoreError, match=f"Tape {ids[4]} cannot be read: step 1"):
        export_chat_jsonl(store, calc_agent(), tmp_path / "r.jsonl", workers=2, on_problem="raise")


def test_memory_stores_and_tapes_are_exported_by_one_process(tmp_path: Path) -> None:
    agent = calc_agent()
    tapes = [solve(None, agent, a, 1) for a in range(3)]
    with TapeStore("sqlite:///:memory:") as store:
        for tape in tapes:
            store.save(tape, status="stopped", agent="calc")
        from_store = export_chat_jsonl(store, agent, tmp_path / "a.jsonl", workers=4)
    in_memory = export_chat_jsonl(tapes, agent, tmp_path / "b.jsonl", workers=4)
    assert from_store.examples == in_memory.examples == 6
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    with pytest.raises(UsageError, match="at least 1"):
        export_chat_jsonl(tapes, agent, tmp_path / "c.jsonl", workers=0)


def test_hand_written_steps_named_by_node_export_with_workers(
    store: TapeStore, tmp_path: Path
) -> None:
    tape = Tape(steps=[UserMessage(content="What is 1 + 1?")])
    tape.append(FinalAnswer(answer="2", metadata=StepMetadata(agent="calc", node="main")))
    store.save(tape, status="stopped", agent="calc")
    report = export_chat_jsonl(store, calc_agent(), tmp_path / "t.jsonl", workers=2)
    assert report.examples == 1 and not report.problems
