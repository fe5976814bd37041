"""Chat JSONL in OpenAI's fine-tuning format, and Hugging Face datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tapeagents.errors import UsageError
from tapeagents.export import (
    ExportReport,
    TrainingExample,
    chat_record,
    read_chat_jsonl,
    tape_examples,
    to_hf_dataset,
    training_examples,
    write_chat_jsonl,
)
from tests.export.agents import boss_agent, calc_agent, json_agent, planner_agent, solve


def test_chat_record_is_an_openai_fine_tuning_record() -> None:
    agent = calc_agent()
    tape = solve(None, agent, 2, 5)
    first, second = tape_examples(tape, agent)
    record = chat_record(second)
    assert set(record) == {"messages", "tools"}
    assert [t["function"]["name"] for t in record["tools"]] == ["add", "final_answer"]
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    history, answer = record["messages"][2], record["messages"][-1]
    assert history["weight"] == 0 and "weight" not in answer  # learn each answer once
    assert history["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 5}'}
    assert answer["content"] is None
    assert answer["tool_calls"][0]["function"]["name"] == "final_answer"
    assert json.loads(answer["tool_calls"][0]["function"]["arguments"]) == {"answer": "7"}
    assert "tools" in chat_record(first) and len(chat_record(first)["messages"]) == 3


def test_jsonl_lines_equal_the_records(tmp_path: Path) -> None:
    agent = calc_agent()
    tapes = [solve(None, agent, a, 1) for a in range(4)]
    examples = list(training_examples(tapes, agent))
    written = write_chat_jsonl(examples, tmp_path / "train.jsonl")
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert written.examples == len(lines) == 8
    assert [json.loads(line) for line in lines] == [chat_record(e) for e in examples]
    assert read_chat_jsonl(tmp_path / "train.jsonl")[0] == chat_record(examples[0])


def test_lines_and_keys_equal_their_definitions_for_every_kind_of_prompt(tmp_path: Path) -> None:
    """The writer builds each line (and the de-duplication key) from texts shared by the examples
    of a tape; whatever the prompts share, they must equal `json.dumps` of the record and the
    hash of the JSON texts."""
    calc, arith = calc_agent(), json_agent()
    tapes = [solve(None, calc, 2, 5), solve(None, arith, 1, 2)]
    tapes += [solve(None, agent, 3, 4) for agent in (planner_agent(), boss_agent())]
    unicode = solve(None, calc, 6, 7)  # non-ASCII text is written as is
    unicode.steps[0] = unicode.steps[0].model_copy(update={"content": "Combien font 6 + 7 ? ✓"})
    tapes.append(unicode)
    agents = [calc, arith, planner_agent(), boss_agent(), calc]
    examples = [
        e for tape, agent in zip(tapes, agents, strict=True) for e in tape_examples(tape, agent)
    ]
    assert len(examples) >= 10
    write_chat_jsonl(examples, tmp_path / "all.jsonl")
    lines = (tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [json.dumps(chat_record(e), ensure_ascii=False) for e in examples]
    assert "✓" in lines[-1]
    for example in examples:
        values = [*example.prompt.messages, example.prompt.tools, example.output.as_message()]
        texts = [json.dumps(value, ensure_ascii=False) for value in values]
        expected = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:32]
        assert example.key() == expected
        alone = TrainingExample.model_validate(example.model_dump())  # texts of its own
        assert alone.key() == expected


def test_validation_examples_go_to_their_own_file_or_are_counted(tmp_path: Path) -> None:
    agent = json_agent()
    tapes = [solve(None, agent, a, 1) for a in range(30)]
    report = ExportReport()
    examples = training_examples(tapes, agent, validation=0.3, seed=3, report=report)
    write_chat_jsonl(examples, tmp_path / "t.jsonl", validation_path=tmp_path / "v.jsonl")
    train = (tmp_path / "t.jsonl").read_text().splitlines()
    valid = (tmp_path / "v.jsonl").read_text().splitlines()
    assert (len(train), len(valid)) == (report.train, report.validation)
    assert report.train > 0 and report.validation > 0

    again = training_examples(tapes, agent, validation=0.3, seed=3)
    written = write_chat_jsonl(again, tmp_path / "x")
    assert written.skipped["validation examples without a validation file"] == report.validation


def test_unwritable_and_bad_files_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(UsageError, match="Cannot write"):
        write_chat_jsonl([], tmp_path / "dir")
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(UsageError, match="line 1: the last message must be the assistant"):
        read_chat_jsonl(tmp_path / "bad.jsonl")


def test_hf_dataset_has_messages_and_tools_columns() -> None:
    datasets = pytest.importorskip("datasets")
    agent = calc_agent()
    examples = list(training_examples([solve(None, agent, 3, 3)], agent))
    dataset = to_hf_dataset(examples)
    assert isinstance(dataset, datasets.Dataset)
    assert set(dataset.column_names) == {"messages", "tools", "tape_id", "step", "task_id", "split"}
    row = dataset[1]
    assert json.loads(row["tools"]) == examples[1].prompt.tools
    assert row["messages"][-1]["role"] == "assistant"
    function = row["messages"][-1]["tool_calls"][0]["function"]
    assert function == {"name": "final_answer", "arguments": '{"answer": "6"}'}
    assert row["step"] == examples[1].start and row["split"] == "train"

    pairs = to_hf_dataset(examples, prompt_completion=True)
    assert {"prompt", "completion"} <= set(pairs.column_names)
    assert pairs[0]["completion"][0]["content"] == "I add 3 and 3."
    with pytest.raises(UsageError, match="No examples"):
        to_hf_dataset([])
