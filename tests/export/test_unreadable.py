"""Exports of many tapes skip the tapes the store cannot read, go on, and report them: the
library functions (one process and workers) and `tapeagents export` in every format; on SQLite
and PostgreSQL. The damage is raw SQL on a store filled by real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tapeagents.errors import CorruptTapeError
from tapeagents.export import (
    ExportReport,
    Selection,
    eval_records,
    export_chat_jsonl,
    training_examples,
)
from tapeagents.store import TapeStore
from tests.cli.conftest import make_invoke
from tests.export.agents import calc_agent, solve


def damage(store: TapeStore, sql: str, **params: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.text(sql), params)


@pytest.fixture
def damaged(store: TapeStore) -> tuple[list[str], list[str]]:
    """Six calculator tapes; the second has a corrupt step and the fifth a corrupt LLM call.
    Returns (all ids, the two damaged ids)."""
    agent = calc_agent()
    ids = [solve(store, agent, a, 2).id for a in range(6)]
    damage(store, "UPDATE steps SET data = '{x' WHERE tape_id = :id AND idx = 2", id=ids[1])
    call_id = store.get(ids[4]).steps[1].metadata.llm_call_id
    damage(store, "UPDATE llm_calls SET prompt = '[' WHERE id = :id", id=call_id)
    return ids, [ids[1], ids[4]]


def test_eval_records_skip_unreadable_tapes_and_report_them(
    store: TapeStore, damaged: tuple[list[str], list[str]]
) -> None:
    ids, bad = damaged
    report = ExportReport()
    records = list(eval_records(store, Selection(tape_ids=ids), report=report))
    assert [r.tape_id for r in records] == [i for i in ids if i not in bad]
    assert report.tapes == 4
    assert [(p.tape_id, p.step_index) for p in report.unreadable] == [(bad[0], 2), (bad[1], 1)]
    assert "step 2 (tool_call) is corrupt" in report.unreadable[0].reason
    assert "was made by the LLM call" in report.unreadable[1].reason
    summary = report.summary()
    assert "2 tapes were left out: the store cannot read them:" in summary
    assert f"tape {bad[0]}: step 2" in summary
    # without a report to list them in, none is left out unnoticed: the first one raises
    with pytest.raises(CorruptTapeError, match=f"Tape {bad[0]} cannot be read: step 2"):
        list(eval_records(store, Selection(tape_ids=ids)))
    with pytest.raises(CorruptTapeError, match=f"Tape {bad[1]} cannot be read: step 1 was"):
        list(eval_records(store, Selection(tape_ids=ids[2:])))


def test_training_examples_skip_unreadable_tapes_unless_raise(
    store: TapeStore, damaged: tuple[list[str], list[str]]
) -> None:
    ids, bad = damaged
    report = ExportReport()
    examples = list(training_examples(store, calc_agent(), Selection(tape_ids=ids), report=report))
    assert {e.tape_id for e in examples} == set(ids) - {bad[0]}  # the calls are not read here
    assert [p.tape_id for p in report.unreadable] == [bad[0]]
    for options in ({"on_problem": "raise", "report": ExportReport()}, {}):
        with pytest.raises(CorruptTapeError, match=f"Tape {bad[0]} cannot be read: step 2"):
            list(training_examples(store, calc_agent(), Selection(tape_ids=ids), **options))


@pytest.mark.parametrize("workers", [1, 2])
def test_chat_export_writes_the_others_with_one_process_or_workers(
    store: TapeStore, damaged: tuple[list[str], list[str]], tmp_path: Path, workers: int
) -> None:
    ids, bad = damaged
    out = tmp_path / "train.jsonl"
    report = export_chat_jsonl(store, calc_agent(), out, workers=workers)
    assert report.tapes == 5 and report.examples == 10
    assert len(out.read_text().splitlines()) == 10
    assert [p.tape_id for p in report.unreadable] == [bad[0]]


def test_the_cli_exports_every_format_then_exits_1(
    store: TapeStore, store_url: str, damaged: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    ids, bad = damaged
    cli = make_invoke(store_url)
    agent = "tests.export.agents:calc_agent"
    runs = {
        "tapes": (["--format", "tapes"], 4),
        "eval": (["--format", "eval"], 4),
        "openai": (["--format", "openai", "--agent", agent], 10),
        "openai-workers": (["--format", "openai", "--agent", agent, "--workers", "2"], 10),
    }
    for name, (args, lines) in runs.items():
        out = tmp_path / f"{name}.jsonl"
        result = cli("export", *args, "--out", str(out))
        assert result.exit_code == 1, (name, result.output)
        assert "Traceback" not in result.output
        assert len(out.read_text().splitlines()) == lines, name
        assert result.stderr.strip().splitlines()[-1].startswith("Error: "), name
        assert "left out because the store cannot read" in result.stderr
        assert f"tape {bad[0]}: step 2 (tool_call) is corrupt" in result.output, name
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert bad[1] not in {r["tape_id"] for r in records}
    one, workers = (tmp_path / f"{name}.jsonl" for name in ("openai", "openai-workers"))
    assert one.read_bytes() == workers.read_bytes()
    raised = cli(
        "export",
        "-f",
        "openai",
        "--agent",
        agent,
        "--on-problem",
        "raise",
        "-o",
        str(tmp_path / "raised.jsonl"),
    )
    assert raised.exit_code == 2 and f"Tape {bad[0]} cannot be read" in raised.stderr


def test_a_tape_whose_header_cannot_be_read_is_skipped_too(tmp_path: Path) -> None:
    # only SQLite lets a typed column hold text; PostgreSQL refuses the damage itself
    with TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}") as store:
        ids = [solve(store, calc_agent(), a, 2).id for a in range(5)]
        damage(store, "UPDATE tapes SET created_at = 'x' WHERE id = :id", id=ids[3])
        reason = "its header is corrupt (created_at: Input should be a valid number"
        with pytest.raises(CorruptTapeError, match=f"Tape {ids[3]} cannot be read: its header"):
            store.list()
        for selection in (Selection(), Selection(tape_ids=ids)):
            report = ExportReport()
            records = list(eval_records(store, selection, report=report))
            assert [r.tape_id for r in records] == [i for i in ids if i != ids[3]]
            assert [p.tape_id for p in report.unreadable] == [ids[3]]
            assert report.unreadable[0].reason.startswith(reason)
            reports = [
                export_chat_jsonl(
                    store, calc_agent(), tmp_path / f"{n}.jsonl", selection, workers=n
                ).model_dump()
                for n in (1, 2)
            ]
            assert reports[0] == reports[1] and reports[0]["tapes"] == 4
            assert [p["tape_id"] for p in reports[0]["unreadable"]] == [ids[3]]
