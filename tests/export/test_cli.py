"""`tapeagents export` in every format, against a store filled by real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tapeagents import run_sync
from tapeagents.export import Selection, chat_record, training_examples
from tapeagents.store import TapeStore
from tests.cli.conftest import make_invoke
from tests.export.agents import calc_agent, calc_env, json_agent, solve


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, list[str]]:
    """Eight calc tapes, one of them wrong; returns (url, ids)."""
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    with TapeStore(url) as store:
        ids = [solve(store, calc_agent(), a, 3).id for a in range(7)]
        wrong = calc_agent()
        wrong.llms["default"].__init__(lambda p: '{"not": "a call"}')
        ids.append(solve(store, wrong, 9, 9).id)
    return url, ids


def test_openai_format_with_validation_split(filled, tmp_path: Path) -> None:
    url, _ = filled
    cli = make_invoke(url)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    result = cli(
        "export", "--format", "openai", "--agent", "tests.export.agents:calc_agent",
        "--outcome", "success", "--validation", "0.3", "--seed", "1",
        "--out", str(train), "--validation-out", str(valid), "--report", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = train.read_text().splitlines() + valid.read_text().splitlines()
    assert len(lines) == 14  # 7 good tapes, 2 outputs each
    assert valid.read_text() and train.read_text()
    with TapeStore(url) as store:
        selection = Selection(outcome="success")
        expected = [chat_record(e) for e in training_examples(store, calc_agent(), selection)]
    assert sorted(map(json.dumps, map(json.loads, lines))) == sorted(map(json.dumps, expected))
    assert "Wrote 14 examples (openai)" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["examples"] == 14 and report["problems"] == []


def test_openai_format_with_workers_writes_the_same_file(filled, tmp_path: Path) -> None:
    url, _ = filled
    cli = make_invoke(url)
    args = ["export", "-f", "openai", "--agent", "tests.export.agents:calc_agent"]
    for workers in ("1", "2"):
        result = cli(*args, "--workers", workers, "-o", str(tmp_path / f"{workers}.jsonl"))
        assert result.exit_code == 0, result.output
        assert "Wrote 14 examples (openai)" in result.output
    assert (tmp_path / "1.jsonl").read_bytes() == (tmp_path / "2.jsonl").read_bytes()


def test_problems_are_shown_and_raise_stops(filled, tmp_path: Path) -> None:
    url, ids = filled
    cli = make_invoke(url)
    out = tmp_path / "x.jsonl"
    args = ["export", "-f", "openai", "--agent", "tests.export.agents:json_agent", "-o", str(out)]
    result = cli(*args, ids[0][:8])
    assert result.exit_code == 0, result.output
    assert "Wrote 0 examples" in result.output
    assert "1 problem (the target" in result.output
    assert "step 1: node 'main' cannot emit step kind 'reasoning'" in result.output
    failed = cli(*args, "--on-problem", "raise")
    assert failed.exit_code == 2 and "cannot emit step kind" in failed.stderr


def test_tokens_format(filled, tmp_path: Path) -> None:
    url, ids = filled
    out = tmp_path / "tokens.jsonl"
    result = make_invoke(url)(
        "export", "-f", "tokens", "--agent", "tests.export.agents:calc_agent", "--out", str(out),
        "--max-length", "120", "--truncation", "left", ids[0], ids[1],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and all(len(r["input_ids"]) <= 120 for r in records)
    assert all(len(r["labels"]) == len(r["input_ids"]) for r in records)
    assert "labelled" in result.output


def test_hf_format_saves_a_dataset_dict(filled, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    url, _ = filled
    result = make_invoke(url)(
        "export", "-f", "hf", "--agent", "tests.export.agents:calc_agent",
        "--validation", "0.4", "--out", str(tmp_path / "ds"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(tmp_path / "ds"))
    assert set(loaded) == {"train", "validation"}
    assert len(loaded["train"]) + len(loaded["validation"]) == 14


def test_eval_format_and_matrix(filled, tmp_path: Path) -> None:
    url, _ = filled
    result = make_invoke(url)(
        "export", "-f", "eval", "--out", str(tmp_path / "eval.csv"),
        "--matrix", str(tmp_path / "matrix.csv"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "eval.csv").read_text().splitlines()) == 9
    header, row = (tmp_path / "matrix.csv").read_text().splitlines()
    assert header.startswith("subject,0+3,1+3") and row.startswith("calc@scripted,1,1")
    assert "Wrote the 1 × 8 response matrix" in result.output


def test_eval_over_tapes_without_outcomes_says_what_is_missing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tapes.db'}"
    with TapeStore(url) as store:  # plain runs: no task id, no outcome, no reward
        for a in range(3):
            run_sync(calc_agent(), f"What is {a} + 3?", calc_env(), store=store)
    cli = make_invoke(url)
    records, matrix = tmp_path / "eval.csv", tmp_path / "matrix.csv"
    result = cli("export", "-f", "eval", "-o", str(records), "--matrix", str(matrix))
    assert result.exit_code == 1, result.output
    assert len(records.read_text().splitlines()) == 4  # the records are still worth having
    assert not matrix.exists()  # no 0 × 0 matrix passing for a result
    stderr = " ".join(result.stderr.split())
    assert "Error: The response matrix was not written: 3 of 3 tapes have no task id and " in stderr
    assert "3 of 3 tapes have no outcome or reward" in stderr and "0 of 3 here" in stderr
    assert "store.set_status(tape.id, status, metadata=tape.metadata)" in stderr

    alone = cli("export", "-f", "eval", "-o", str(records))  # no matrix asked: a note, exit 0
    assert alone.exit_code == 0, alone.output
    assert "Wrote 3 evaluation records" in alone.stdout
    assert "Note: 3 of 3 tapes have no task id" in " ".join(alone.stderr.split())

    none = cli("export", "-f", "eval", "--tag", "nothing", "-o", str(tmp_path / "none.csv"))
    assert none.exit_code == 1, none.output
    assert "No tape matched the selection, so nothing was written" in " ".join(none.stderr.split())
    assert not (tmp_path / "none.csv").exists()


def test_eval_with_some_tapes_unscored_writes_the_matrix_and_says_so(
    filled, tmp_path: Path
) -> None:
    url, _ = filled
    with TapeStore(url) as store:
        run_sync(calc_agent(), "What is 1 + 1?", calc_env(), store=store)  # not judged
    result = make_invoke(url)(
        "export", "-f", "eval", "-o", str(tmp_path / "eval.csv"),
        "--matrix", str(tmp_path / "matrix.csv"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Wrote the 1 × 8 response matrix" in result.stdout
    stderr = " ".join(result.stderr.split())
    assert "1 of 9 tapes have no task id and 1 of 9 tapes have no outcome or reward" in stderr
    assert "8 of 9 here" in stderr


def test_training_formats_need_an_agent(filled, tmp_path: Path) -> None:
    cli = make_invoke(filled[0])
    result = cli("export", "-f", "openai", "-o", str(tmp_path / "x"))
    assert result.exit_code == 2 and "pass --agent MODULE:ATTR" in result.stderr
    result = cli(
        "export", "-f", "hf", "--agent", "tests.export.agents:calc_agent", "-o", str(tmp_path),
        "--validation", "0.2", "--validation-out", str(tmp_path / "v"),
    )  # fmt: skip
    assert result.exit_code == 2 and "keeps both splits in one DatasetDict" in result.stderr


def test_tapes_format_is_the_default_backup(filled, tmp_path: Path) -> None:
    url, ids = filled
    result = make_invoke(url)("export", "-o", str(tmp_path / "all.jsonl"))
    assert result.exit_code == 0 and "Exported 8 tapes" in result.output
    assert json.loads((tmp_path / "all.jsonl").read_text().splitlines()[0])["tape"]["id"] in ids


def test_json_mode_answers_are_the_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    with TapeStore(url) as store:
        solve(store, json_agent(), 1, 2)
    out = tmp_path / "o.jsonl"
    agent = "tests.export.agents:json_agent"
    result = make_invoke(url)("export", "-f", "openai", "--agent", agent, "-o", str(out))
    assert result.exit_code == 0, result.output
    (line,) = out.read_text().splitlines()
    answer = json.loads(line)["messages"][-1]["content"]
    assert answer == '[{"kind": "final_answer", "answer": "3"}]'
